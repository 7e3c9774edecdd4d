"""Bounding a worker's output: at most ``files`` files of ``max_bytes`` each, the oldest dropped.

The worker writes straight into ``output.log`` (opened with O_APPEND, so it always writes at the
end, wherever that is): no pipe through the shim, so a killed shim never breaks a worker's
output. The shim looks at the sizes every ``CHECK_S`` and rotates by copy and truncate; a worker
can overshoot by what it writes in one interval plus the rotation's own time (measured: 1.1 GB
at page-cache speed, docs/runtimes.md), and the lines written between the copy and the truncate
are lost (as with logrotate's copytruncate). A shorter interval would cost one copy of up to
``max_bytes`` per check per flooding worker, in the loop that serves every worker.
"""

from __future__ import annotations

import contextlib
import os

CHECK_S = 0.5


def rotated(path: str, i: int) -> str:
    return path if i == 0 else f"{path}.{i}"


def rotate_if_needed(path: str, max_bytes: int, files: int) -> bool:
    try:
        size = os.stat(path).st_size
    except OSError:
        return False
    if size <= max_bytes:
        return False
    if files > 1:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rotated(path, files - 1))
        for i in range(files - 2, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(rotated(path, i), rotated(path, i + 1))
        with open(path, "rb") as src, open(rotated(path, 1), "wb") as dst:
            left = max_bytes  # keep the newest max_bytes of the file
            src.seek(max(0, size - max_bytes))
            while left > 0:
                n = os.copy_file_range(src.fileno(), dst.fileno(), left)
                if n <= 0:
                    break
                left -= n
    os.truncate(path, 0)
    return True
