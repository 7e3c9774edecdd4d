"""Starting the shim: one per node (a lock), detached from whoever starts it, ready when it says so."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import sys

from . import LOCK_NAME, SOCKET_NAME, WORKERS
from .files import log, move_to_own_cgroup
from .monitor import Shim

_PR_SET_CHILD_SUBREAPER = 36


def _lock(base: str) -> int | None:
    fd = os.open(os.path.join(base, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _listen(base: str) -> socket.socket:
    path = os.path.join(base, SOCKET_NAME)
    if os.path.lexists(path):
        os.unlink(path)  # we hold the lock: whoever made it is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(256)
    return sock


def _args(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        if arg == "--daemon":
            out["daemon"] = "1"
        elif arg.startswith("--"):
            out[arg[2:]] = next(it)
    return out


def main(argv: list[str]) -> int:
    a = _args(argv)
    ready = int(a["ready-fd"]) if "ready-fd" in a else None
    if "daemon" in a and os.fork() > 0:
        os._exit(0)  # the starter waits for this one only; the shim is orphaned, not berth's child

    def tell(msg: str) -> None:
        if ready is not None:
            os.write(ready, msg.encode() + b"\n")

    os.umask(0o022)  # not whatever the starter had: runc makes the workers' mount points with it
    base, runc, root = a["dir"], a["runc"], a["root"]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        tell(f"error prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
        return 1
    os.makedirs(os.path.join(base, WORKERS), mode=0o700, exist_ok=True)
    if "lock-fd" in a:
        lock_fd, listen = int(a["lock-fd"]), socket.socket(fileno=int(a["listen-fd"]))
        os.set_inheritable(lock_fd, False)
        os.set_inheritable(listen.fileno(), False)
        log(f"re-executed in place (upgrade {os.environ.get('BERTH_SHIM_EXECS')})")
    else:
        got = _lock(base)
        if got is None:
            try:
                with open(os.path.join(base, LOCK_NAME), encoding="ascii") as fh:
                    tell(f"running {fh.read().strip()}")
            except OSError:
                tell("running ?")
            return 0
        lock_fd = got
        if "daemon" in a:
            move_to_own_cgroup()
        listen = _listen(base)
        log(f"started (runc {runc}, root {root})")
    shim = Shim(base, runc, root, listen, lock_fd)
    shim.recover()
    tell(f"ready {os.getpid()}")
    if ready is not None:
        os.close(ready)
    shim.run()
    os.unlink(os.path.join(base, SOCKET_NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
