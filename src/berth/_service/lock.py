"""One supervisor per node: a lock in the state dir and a claim on the engine side.

Two supervisors of one node remove each other's workers (each sees the other's as "no longer
assigned"). The lock (``flock`` on ``<state_dir>/supervisor.lock``) stops a second one with the
same state dir; the claim (every container carries a ``berth.owner`` label naming the state dir
that launched it) stops one that shares only the node name and the engine. Whoever runs a
supervisor (``berth serve``, ``berth supervise``, the cluster agent) holds the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .._core.timefmt import iso_utc
from .._exceptions import SupervisorLocked
from .._runtimes.base import WorkerState

LOCK_FILE = "supervisor.lock"
log = logging.getLogger("berth.supervisor")


class SupervisorLock:
    """An exclusive, non-blocking lock on a node's state dir, held until ``release`` (or exit:
    the kernel drops it with the process, so a SIGKILLed supervisor never leaves it stuck)."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self, **about: str) -> None:
        """Take the lock or raise ``SupervisorLocked`` naming the holder (pid, since, what).
        Taking it again while holding it is a no-op."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise SupervisorLocked("state_dir", f"another supervisor holds {self.path} ({holder}); "
                                   "stop it first, one supervisor per node") from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "since": iso_utc(digits=0), **about}
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return ", ".join(f"{k} {v}" for k, v in info.items()) or "holder unknown"
    except (OSError, ValueError, AttributeError):
        return "holder unknown"


def foreign_owners(workers: Iterable[WorkerState], state_dir: str) -> dict[str, list[str]]:
    """Other state dirs that launched workers of this node name on this engine, with their
    workers. Containers without the label (launched before berth had it) count as ours."""
    out: dict[str, list[str]] = {}
    for w in workers:
        owner = w.decoded.owner
        if owner and owner != state_dir:
            out.setdefault(owner, []).append(w.worker_id)
    return out


def conflicts(workers: Iterable[WorkerState], state_dir: str, before: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """``foreign_owners`` now, with one ERROR line when it differs from ``before`` (not one per pass)."""
    others = foreign_owners(workers, state_dir)
    if others and others != before:
        log.error("workers of another supervisor with this node name on this engine (left alone): %s", others)
    return others


def check_claim(workers: Iterable[WorkerState], state_dir: str, node_name: str) -> None:
    """Refuse to serve a node whose workers on this engine belong to another supervisor."""
    others = foreign_owners(workers, state_dir)
    if others:
        owner, wids = sorted(others.items())[0]
        shown = ", ".join(sorted(wids)[:5]) + (", …" if len(wids) > 5 else "")
        raise SupervisorLocked("node.name", f"node {node_name!r} on this engine is served by another supervisor "
                               f"(state dir {owner}; its workers: {shown}); give this one its own node.name, "
                               "or stop the other and remove its workers")
