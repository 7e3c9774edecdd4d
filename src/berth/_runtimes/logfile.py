"""A worker's output file, read in chunks: the last lines without reading the whole file, and follow."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO


def tail_offset(fh: BinaryIO, lines: int, block: int = 65536) -> int:
    """The offset at which the last ``lines`` lines of a file start, reading backwards in blocks."""
    end = fh.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    pos, seen = end, 0
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step)
        if pos + step == end and data.endswith(b"\n"):
            data = data[:-1]
        count = data.count(b"\n")
        if seen + count >= lines:
            cut = len(data)
            for _ in range(lines - seen):
                cut = data.rindex(b"\n", 0, cut)
            return pos + cut + 1
        seen += count
    return 0


def _line_count(path: str) -> int:
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            n += block.count(b"\n")
    return n


def read_logs(paths: list[str], tail: int | None, follow: bool, running: Callable[[], bool]) -> Iterator[bytes]:
    """Rotated files (oldest first, the current one last) as one stream; ``tail`` lines from the
    end of all of them; ``follow`` follows the current one (from its top again when a rotation
    has truncated it)."""
    files = [p for p in paths[:-1] if os.path.exists(p)] + [paths[-1]]
    first, take = 0, tail
    if tail is not None:
        need = tail
        for idx in range(len(files) - 1, -1, -1):
            try:
                n = _line_count(files[idx])
            except FileNotFoundError:
                n = 0
            if n >= need or idx == 0:
                first, take = idx, need
                break
            need -= n
    for idx in range(first, len(files)):
        last = idx == len(files) - 1
        yield from read_log(files[idx], take if idx == first else None, follow and last, running)


def read_log(path: str, tail: int | None, follow: bool, running: Callable[[], bool]) -> Iterator[bytes]:
    """Chunks of ``path`` from ``tail`` lines before its end (all of it when None); with ``follow``,
    keep reading while ``running()`` says the worker runs: on into the new file once a rotation
    has renamed this one away (read to its end first), or from the top of a truncated one."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in the generator's finally
    except FileNotFoundError:
        return
    try:
        if tail is not None:
            fh.seek(tail_offset(fh, tail))
        ended = False
        while True:
            chunk = fh.read(65536)
            if chunk:
                yield chunk
                continue
            if not follow or ended:
                return
            ended = not running()  # then one more look: what it wrote before it ended is there
            try:
                renamed = os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                renamed = False  # between a rotation's rename and its new file: look again
            if renamed:
                fh.close()
                fh = open(path, "rb")  # noqa: SIM115 - closed in the finally
                continue
            if ended:
                continue
            if os.fstat(fh.fileno()).st_size < fh.tell():
                fh.seek(0)  # truncated (the process runtime's file, emptied by hand)
            time.sleep(0.1)
    finally:
        fh.close()
