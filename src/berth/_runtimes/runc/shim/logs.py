"""A worker's output: a pipe that the shim drains into at most ``files`` files of ``max_bytes``.

The worker's stdout and stderr are the write end of a pipe; only the shim has the read end and
the files, which sit in the worker's root-only runc directory. So the worker holds no descriptor
of a file on berth's filesystems: it cannot reserve space behind one (``fallocate``), lease one
(which made the old copy-and-truncate rotation wait 45 s in the shim's only loop), or write past
the node's limits between two checks (1.1 GB at page-cache speed, issue 18.1). The shim counts
what it writes and rotates by renaming before a file passes ``max_bytes`` (the oldest file is
unlinked first), so the files never hold more than ``files * max_bytes``.

Draining never blocks the loop on the worker: the read end is non-blocking and each turn moves
at most ``DRAIN_BYTES`` per worker (``splice``, no copy through the shim). A worker that writes
faster than the disk takes fills its pipe and waits in its own ``write``. When the disk is full
the output is read and dropped (counted in the shim's log), never left to block the worker.

The pipe's read end outlives an upgrade (it is inherited across the shim's ``execve``); a
killed shim takes it along, and the worker's writes then fail with EPIPE (docs/runtimes.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
from typing import Any

from .files import log

PIPE_BYTES = 1 << 20
"""The pipe's buffer (``F_SETPIPE_SZ``; its pages are charged to the writer's memory cgroup)."""
DRAIN_BYTES = 1 << 20
"""At most this much of one worker's output per turn of the loop: the others are served between."""
TURN_BYTES = 8 << 20
"""About this much output in all per turn, shared by the workers that have some, each at least
``MIN_SHARE``: however many flood at once, requests and exits wait for one bounded turn of
writing (16 MiB with 256 workers), not for every flood."""
MIN_SHARE = 64 << 10
REST_S = 0.005
REST_BELOW = 64 << 10
"""A worker whose turn moved less than ``REST_BELOW`` is not looked at again for ``REST_S``: one
that writes a byte at a time, paced so that each write would wake the shim, costs it at most
200 wake-ups a second (each ~25 µs of CPU), not one per write; a heavy writer is never rested, and
its pipe holds 5 ms of output at 200 MB/s."""
_F_SETPIPE_SZ = 1031
_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)


def rotated(path: str, i: int) -> str:
    return path if i == 0 else f"{path}.{i}"


def make_pipe() -> tuple[int, int]:
    """(read end, write end), both close-on-exec; the read end does not block the shim."""
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(r, False)
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
    return r, w


class Output:
    """One worker's pipe and the file it is drained into (``path``, then ``path.1`` …)."""

    def __init__(self, rfd: int, path: str, max_bytes: int, files: int) -> None:
        self.rfd, self.path = rfd, path
        self.max_bytes, self.files = max(1, int(max_bytes)), max(1, int(files))
        self.fd, self.size = -1, 0
        self.lost = 0
        """Bytes read and dropped because they could not be written (a full disk)."""
        self.moved = 0
        """Bytes taken from the pipe, in all."""
        self.rest_until: float | None = None
        """While resting: when its pipe is looked at again (it is out of the selector meanwhile)."""
        self.error: str | None = None
        self._splice = True
        self._open(truncate=False)  # after an upgrade, the file being written goes on

    def _open(self, truncate: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        try:
            self.fd = os.open(self.path, flags, 0o640)
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            self.fd, self.error = -1, f"cannot open {self.path}: {exc.strerror}"

    def _rotate(self) -> None:
        """Make room: drop the oldest file, shift the others, start a new one. Renames only: no
        copy, and nothing anyone else holds can make it wait."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(rotated(self.path, self.files - 1))
            for i in range(self.files - 2, -1, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(rotated(self.path, i), rotated(self.path, i + 1))
        except OSError as exc:
            self.error = f"cannot rotate {self.path}: {exc.strerror}"
        self._open(truncate=True)

    def drain(self, budget: int = DRAIN_BYTES) -> bool:
        """Move up to ``budget`` bytes from the pipe to the files; False once no writer is left."""
        moved = 0
        while moved < budget:
            if self.fd < 0 or self.size >= self.max_bytes:
                self._rotate()
            try:
                n = self._move(min(budget - moved, self.max_bytes - self.size) if self.fd >= 0 else budget - moved)
            except BlockingIOError:
                return True
            if n == 0:
                return False
            moved += n
            self.moved += n
        return True

    def _move(self, room: int) -> int:
        """Bytes taken from the pipe (written, or dropped when they cannot be); 0 at its end."""
        if self.fd >= 0:
            try:
                if not self._splice:
                    return self._copy(room)
                n = os.splice(self.rfd, self.fd, room, flags=_SPLICE)
                self.size += n
                return n
            except BlockingIOError:
                raise
            except OSError as exc:
                if exc.errno == errno.EINVAL and self._splice:
                    self._splice = False  # a filesystem without splice: read and write instead
                    return self._move(room)
                if exc.errno not in _NO_SPACE:
                    raise
                self.error = f"cannot write {self.path}: {exc.strerror}; output dropped"
        data = os.read(self.rfd, min(room, 1 << 16))  # BlockingIOError when empty, b"" at the end
        self.lost += len(data)
        return len(data)

    def _copy(self, room: int) -> int:
        data = os.read(self.rfd, min(room, 1 << 16))
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                self.size += n
                view = view[n:]
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            self.lost += len(view)
            self.error = f"cannot write {self.path}: {exc.strerror}; output dropped"
        return len(data)

    def close(self) -> None:
        for fd in (self.rfd, self.fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.rfd = self.fd = -1


class Outputs:
    """The output half of the shim's loop (``monitor.Shim``): each worker's pipe and files, by
    container id, from its launch until its container is deleted."""

    sel: selectors.BaseSelector
    outputs: dict[str, Output]

    def _open_output(self, cid: str, rfd: int, info: dict[str, Any]) -> None:
        """Drain ``rfd`` into the worker's ``log`` files (``started.json``'s limits)."""
        out = Output(rfd, str(info["log"]), int(info.get("log_max_bytes") or PIPE_BYTES),
                     int(info.get("log_files") or 1))
        self.outputs[cid] = out
        self.sel.register(rfd, selectors.EVENT_READ, ("out", cid))

    def _drain_output(self, cid: str, budget: int | None = None, now: float | None = None) -> None:
        """Drain ``cid``'s pipe; with ``now`` (a turn of the loop), rest it if the turn moved little."""
        out = self.outputs.get(cid)
        if out is None:
            return
        error, before = out.error, out.moved
        try:
            alive = out.drain() if budget is None else out.drain(budget)
        except OSError as exc:
            out.error, alive = f"cannot drain the output of {cid}: {exc}", False
        if out.error != error and out.error:
            log(out.error)  # once per kind of failure, not once per chunk
        if not alive:
            self._close_output(cid)
        elif now is not None and out.moved - before < REST_BELOW and out.rest_until is None:
            self.sel.unregister(out.rfd)
            out.rest_until = now + REST_S

    def _wake_outputs(self, now: float) -> float | None:
        """Look again at the pipes whose rest is over; when the next one's is (None: none rests)."""
        nearest = None
        for cid, out in self.outputs.items():
            if out.rest_until is None:
                continue
            if out.rest_until <= now:
                out.rest_until = None
                self.sel.register(out.rfd, selectors.EVENT_READ, ("out", cid))
            elif nearest is None or out.rest_until < nearest:
                nearest = out.rest_until
        return nearest

    def _close_output(self, cid: str) -> None:
        out = self.outputs.pop(cid, None)
        if out is not None:
            if out.rest_until is None:
                self.sel.unregister(out.rfd)
            if out.lost:
                log(f"{out.lost} bytes of the output of {cid} could not be written and were dropped")
            out.close()

    def carry_outputs(self) -> str:
        """``name=fd,…`` of every pipe's read end (``name``: the worker's directory), for the
        shim's next program image, which drains them on (``recover``)."""
        return ",".join(f"{os.path.basename(os.path.dirname(out.path))}={out.rfd}" for out in self.outputs.values())
