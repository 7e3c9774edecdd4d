"""berth's one writer of files that must survive a crash of the machine, not only of a process.

A file is replaced whole: written to a temporary file beside it (a name of its own, never reached
through a link), flushed to the disk (``fsync``), renamed over the old one, and the directory
flushed too, so that after a power loss the path holds the old file or the whole new one, never a
part of either and never nothing. A failure at any step leaves the old file as it was and no
temporary file behind. An append-only journal is flushed after each record.

What goes through it, and why (the others are for people to read, or worthless once the machine
has crashed, since every container dies with it):

- the exit journal (``_node/journal.py``, append-only: each record flushed before it returns):
  what makes an exit reported exactly once;
- the supervisor's desired state and counters, its event log, the cluster agent's cache;
- ``berth serve --storm``'s exit ledger (``_service/stormexits.py``): an exit is kept until Storm's
  plugin acknowledges it, and removed for good once it has;
- the shim's ``exit.json`` (how a worker ended: an exit the shim has recorded may be acknowledged
  and its container deleted, and then this file is all that is left of it).

Written atomically but not flushed (``durable=False``), because nothing in them outlives the
containers, which all end with the machine: a launch's request (``launch.json``), that the
container started (``started.json``: without it, a worker is taken for half-made and removed,
which is what it is after a crash), a grace period's SIGKILL deadline (``kill.json``), a bundle's
``config.json``, a ``runc exec`` process file; and the runc runtime's ``meta.json``, written on a
launch's path, where a flush waited on the disk in every launch (14 % of a burst of 50 launches'
time); the kernel writes it out within seconds, and a worker launched and ended in the seconds
before a power loss may be missing from ``ps`` after it (its exit is still pushed and reported
once). So no flush waits on a launch.

Standard library only: the shim (``shim/``) writes with it, and berth imports it from here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable

_seq = itertools.count()


def sync_dir(directory: str, fsync: Callable[[int], None] = os.fsync) -> None:
    """Flush a directory's entries (a rename or a new file in it) to the disk."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int = 0o600, *, durable: bool = True,
                 fsync: Callable[[int], None] = os.fsync) -> None:
    """Replace ``path`` with ``data`` (owner and mode ``mode``, whatever the umask). With
    ``durable`` the data and the rename are on the disk when this returns. Raises the
    ``OSError`` of the step that failed; only a failure to flush the directory leaves the new
    file in place (not yet known to be on the disk). ``fsync`` is how a test fails a step."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{next(_seq)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        sync_dir(directory, fsync)


def unlink_durably(path: str) -> None:
    """Remove ``path`` (a missing one is fine) so that a crash does not bring it back."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    sync_dir(os.path.dirname(path))


def append_record(fd: int, data: bytes, fsync: Callable[[int], None] = os.fsync) -> None:
    """Append one record to a journal open with ``O_APPEND`` and flush it before returning."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    fsync(fd)
