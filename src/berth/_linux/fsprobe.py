"""Is a directory really writable (space, inodes, a read-only remount)? Write to it and see."""

from __future__ import annotations

import os
import tempfile


def probe_write(directory: str | os.PathLike[str], sync: bool = True) -> None:
    """Write, sync and remove a small file in ``directory``; raises the ``OSError`` that a real
    write would meet (ENOSPC, EROFS, EACCES), which a mode bit or ``statvfs`` would not all show.
    Without ``sync`` the write alone answers (the space is reserved when it is written), and no
    disk round trip is paid: for a check made on every launch."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
    try:
        os.write(fd, b"ok")
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)
