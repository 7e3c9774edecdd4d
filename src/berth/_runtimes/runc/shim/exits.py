"""How the shim records an exit: the status and the cgroup's numbers, to ``exit.json``, to every
subscribed berth, and to whoever waits on a kill.

Exit files are written at the end of the loop's turn, after berth has been told (a burst of
exits is pushed at once, the flushes come after). A full disk does not lose an exit, nor make the
shim die: a record whose file cannot be written is kept in memory (``unwritten``), tried again
every ``RETRY_S`` until there is space, carried
across the shim's ``execve`` (a memfd, never the full disk), pushed to berth all the same, and
given to whoever asks (``exit`` op), so that berth never takes the ended worker for running.
"""

from __future__ import annotations

import json
import os
import selectors
from typing import Any

from .files import cgroup_numbers, decode_status, log, now_iso, proc_state, write_json
from .logs import PIPE_BYTES
from .wire import Conn

RETRY_S = 1.0
"""How often exits that could not be written are tried again."""


class Child:
    """A container's init process, watched by the shim (its parent, or adopted through a pidfd)."""

    def __init__(self, info: dict[str, Any], wdir: str, pidfd: int | None = None) -> None:
        """``info`` is the worker's ``started.json``."""
        self.cid, self.worker, self.dir, self.pid = str(info["id"]), str(info.get("worker", "")), wdir, int(info["pid"])
        self.memcg, self.cgv = info.get("memcg"), int(info.get("cgroup_version", 1))
        self.started_at, self.pidfd = str(info.get("started_at")), pidfd
        self.log, self.log_max, self.log_files = info.get("log"), info.get("log_max_bytes"), info.get("log_files", 1)


class ExitBook:
    """The exit half of the shim's loop (``monitor.Shim``)."""

    sel: selectors.BaseSelector
    conns: dict[int, Conn]
    children: dict[int, Child]
    by_cid: dict[str, Child]
    pending: dict[str, dict[str, Any]]
    waiters: dict[str, list[tuple[Conn, str]]]
    deleting: dict[int, tuple[str, list[Conn]]]
    unwritten: dict[str, tuple[str, dict[str, Any]]]
    failed: set[str]
    root: str

    def _send(self, conn: Conn, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def _delete(self, cid: str, conn: Conn | None) -> int:
        raise NotImplementedError

    def _drain_output(self, cid: str, budget: int | None = None) -> None:
        raise NotImplementedError

    def reap(self) -> None:
        raise NotImplementedError

    def _adopted_exit(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is not None:
            self._record(child, None)

    def _record(self, child: Child, status: int | None, when: float | None = None) -> None:
        """Write the exit file, then tell the subscribers and whoever waits on a kill. The output
        the worker wrote before it ended is drained first, so it is there when its end is known."""
        self._drain_output(child.cid, 4 * PIPE_BYTES)
        oom, peak = cgroup_numbers(child.memcg, child.cgv)
        rec: dict[str, Any] = {"id": child.cid, "worker": child.worker, "pid": child.pid, "status": status,
                               "started_at": child.started_at, "finished_at": now_iso(when),
                               "oom_kills": oom, "peak_memory_bytes": peak, "status_lost": status is None}
        if status is None:
            rec.update(exit_code=None, signal=None, core_dumped=False)
        else:
            rec.update(decode_status(status))
        path = os.path.join(child.dir, "exit.json")
        self.children.pop(child.pid, None)
        self.by_cid.pop(child.cid, None)
        if child.pidfd is not None:
            self.sel.unregister(child.pidfd)
            os.close(child.pidfd)
        waiters = self.waiters.pop(child.cid, [])
        for conn, what in waiters:
            if what == "kill":
                self._send(conn, {"ok": True, "id": child.cid, "running": False, "exit": rec})
        removers = [conn for conn, what in waiters if what == "remove"]
        if removers:  # removed, not ended: nobody is told (as the engine's forced removal), no file
            self.deleting[self._delete(child.cid, None)][1].extend(removers)
            return
        event = {"event": "exit", **rec}
        self.pending[child.cid] = event
        for conn in list(self.conns.values()):
            if conn.subscribed:
                self._send(conn, event)
        # Written (durably) at the end of this turn of the loop, once berth has been told of every
        # exit of the turn, while it journals them: the flushes are off the exits' path, and a burst
        # of exits is pushed at once, not one flush after another. Safe: an acknowledgement is read
        # in a later turn, and a berth that finds no file meanwhile asks this shim (``exit``).
        self.unwritten[child.cid] = (path, rec)

    def _write_exit(self, cid: str, path: str, rec: dict[str, Any]) -> bool:
        try:
            write_json(path, rec)
        except OSError as exc:
            if cid not in self.failed:
                log(f"cannot write the exit of {cid} ({exc.strerror}): kept in memory, written when it can be")
            self.unwritten[cid] = (path, rec)
            self.failed.add(cid)
            return False
        self.unwritten.pop(cid, None)
        if cid in self.failed:
            self.failed.discard(cid)
            log(f"wrote the exit of {cid}")
        return True

    def _write_unwritten(self, retry: bool) -> None:
        """The exit files recorded this turn; with ``retry`` also those that failed before (those
        wait ``RETRY_S`` between attempts: a full disk is not tried on every turn)."""
        for cid, (path, rec) in list(self.unwritten.items()):
            if cid in self.failed and not retry:
                continue
            if not os.path.isdir(os.path.dirname(path)):
                self.unwritten.pop(cid)  # the worker was removed meanwhile
                self.failed.discard(cid)
            else:
                self._write_exit(cid, path, rec)

    def _exit_of(self, cid: str) -> dict[str, Any] | None:
        """The exit of ``cid`` if this shim has recorded it and not yet written it (or not yet
        had it acknowledged); None while it runs or when this shim does not know it. Reaps first:
        a worker that has just ended is recorded, not reported as running."""
        self.reap()
        child = self.by_cid.get(cid)
        if child is not None and child.pidfd is not None and not _alive(child.pid):
            self._record(child, None)
        if cid in self.unwritten:
            return self.unwritten[cid][1]
        event = self.pending.get(cid)
        return None if event is None else {k: v for k, v in event.items() if k != "event"}

    # -- across an execve -----------------------------------------------------------------------

    def carry_unwritten(self) -> int | None:
        """The unwritten exits in a memfd the next program image inherits (None: nothing to carry)."""
        if not self.unwritten:
            return None
        fd = os.memfd_create("berth-shim-unwritten", 0)
        data = json.dumps({cid: [path, rec] for cid, (path, rec) in self.unwritten.items()}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return fd

    def restore_unwritten(self, fd: int) -> None:
        """Take back what ``carry_unwritten`` handed over; pending again unless acknowledged
        (acknowledged: its container is deleted from runc's root)."""
        with os.fdopen(fd, "rb") as fh:
            fh.seek(0)
            carried = json.loads(fh.read() or b"{}")
        for cid, (path, rec) in carried.items():
            self.unwritten[cid] = (path, rec)
            self.failed.add(cid)
            if os.path.isdir(os.path.join(self.root, cid)):
                self.pending[cid] = {"event": "exit", **rec}


def _alive(pid: int) -> bool:
    st = proc_state(pid)
    return st is not None and st[0] != "Z"
