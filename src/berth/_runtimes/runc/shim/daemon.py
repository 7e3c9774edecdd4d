"""Starting the shim: one per node (a lock), detached from whoever starts it, ready when it says so."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import socket
import sys
import time
import traceback

from . import LOCK_NAME, SOCKET_NAME, WORKERS
from .files import log, move_to_own_cgroup
from .monitor import Shim

_PR_SET_CHILD_SUBREAPER = 36
MAX_FILES = 65536
CRASH_BACKOFF_MAX_S = 30.0
"""A shim that keeps crashing re-executes itself at most this often (it never exits: its exit
would close every worker's pipe and lose every exit status)."""


def _lock(base: str) -> int | None:
    fd = os.open(os.path.join(base, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            return None
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:  # a full disk: the pid is for people and `shim status`, the lock is what counts
        log(f"cannot write the pid into {LOCK_NAME}: {exc.strerror}")
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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, MAX_FILES):  # two per worker (its pipe, its file), plus connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, MAX_FILES), hard))
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
    try:
        if "carry" in a:
            shim.restore_unwritten(int(a["carry"]))
        shim.recover(_pipes(a.get("pipes", "")))
        tell(f"ready {os.getpid()}")
        if ready is not None:
            os.close(ready)
            ready = None
        shim.run()
    except Exception:
        log("crashed:\n" + traceback.format_exc())
        if ready is not None:
            os.close(ready)  # the starter hears no "ready": it reports the failure
        crashes = int(os.environ.get("BERTH_SHIM_CRASHES", "0")) + 1
        time.sleep(min(CRASH_BACKOFF_MAX_S, 0.1 * 2 ** crashes))  # a crash loop must not spin
        shim._exec_self(crashes)
        return 1
    os.unlink(os.path.join(base, SOCKET_NAME))
    return 0


def _pipes(spec: str) -> dict[str, int]:
    """``name=fd,…`` (``Outputs.carry_outputs``) as a mapping; each fd made close-on-exec again."""
    out = {}
    for item in filter(None, spec.split(",")):
        name, _, fd = item.rpartition("=")
        out[name] = int(fd)
        os.set_inheritable(int(fd), False)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
