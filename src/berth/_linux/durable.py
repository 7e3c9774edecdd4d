"""Files that must survive a crash of berth or of the machine: written whole or not at all.

Write a temporary file, fsync it, rename it over the old one, fsync the directory: after a crash
a reader finds the old content or the new, never part of either, and a rename that returned is
not undone by a power cut. Neither the file nor its temporary is ever reached through a link.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_durably(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``; raises the ``OSError`` met (the old file stays then)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    sync_dir(p.parent)


def unlink_durably(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` (a missing one is fine) so that a crash does not bring it back."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    sync_dir(Path(path).parent)


def sync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
