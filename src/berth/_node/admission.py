"""Admission: the sum of what the node's workers hold stays within its capacity.

What a worker holds is what it was given (its memory, cpu and pids limits), counted from the
runtime (every container of the node that is not over, whoever launched it: its labels say what
it got), plus launches under way in any berth process (each notes what it takes beside its claim
in the state dir), plus, for a supervisor, the ended containers of its workers that are only
between two runs. One launch at a time counts and notes, under the state dir's admission lock:
two launches never both fit into the last room, and none waits for another's container to be made.
The lock also counts admissions, so a process reuses its own listing while no other process has
admitted anything since (a burst of launches lists the runtime once, not once per launch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict

from .._core.config import NodeConfig
from .._core.hostfacts import HostFacts
from .._core.limits import NodeCapacity, Usage, check_admission, node_capacity
from .._core.plan import Plan
from .._exceptions import BerthError, LaunchError
from .._runtimes.base import Runtime, WorkerState, WorkerStatus
from .state import Claim, StateDir

LISTING_S = 2.0
"""The longest a process reuses its own listing (a container made by hand is counted after that)."""
OVER = (WorkerStatus.EXITED, WorkerStatus.MISSING)
"""States in which a container holds nothing (its processes are gone)."""


class Admission:
    def __init__(self, config: NodeConfig, host: HostFacts, runtime: Runtime, state: StateDir) -> None:
        self.config, self.host, self.runtime, self.state = config, host, runtime, state
        self._capacity: NodeCapacity | None = None
        self._listed: list[WorkerState] | None = None
        """This process's last listing, reused while no other process admitted anything since
        (``_count``) and for at most ``LISTING_S``: a burst of launches lists the runtime once."""
        self._listed_at = 0.0
        self._count = -1
        self._mine: dict[str, Usage] = {}
        """Admitted here since that listing: in it or not, they hold their share."""

    @property
    def capacity(self) -> NodeCapacity:
        if self._capacity is None:
            self._capacity = node_capacity(self.config, self.host)
        return self._capacity

    def takes(self, plan: Plan) -> Usage:
        r = plan.resources
        return Usage.of(r.memory_mb, r.cpu_percent, r.pids_limit, self.capacity.memory_margin_mb)

    def usage(self, listed: Sequence[WorkerState] | None = None, held: Collection[str] = (),
              launching: bool = True) -> Usage:
        """What the node's workers hold now: every container of this node that is not over (from
        ``listed``, else one listing of the runtime), the ended containers of the ``held`` worker
        ids, and launches under way (read under the admission lock; ``launching`` False, for a
        report, leaves them out and touches nothing in the state dir)."""
        if not launching:
            return self._usage(listed, held, exclude=None, notes={})
        with self.state.admission():
            return self._usage(listed, held, exclude=None)

    def admit(self, plan: Plan, claim: Claim, held: Collection[str]) -> None:
        """Check ``plan`` against what the node holds and note what it takes on its ``claim``, or
        raise ``CapacityError``; the note counts until the claim is released.

        A listing this process made is reused while no other process admitted anything since: it
        can then only count too much (a worker that ended since), never too little, and a refusal
        is checked again against a fresh one."""
        takes = self.takes(plan)
        with self.state.admission() as lock:
            try:
                fresh = lock.count() == self._count and time.monotonic() - self._listed_at < LISTING_S
                used = self._usage(self._listed, held, plan.worker_id, mine=True) if fresh else None
                if used is None or not self.capacity.fits(takes, used):
                    self._listed, self._listed_at, self._mine = self.runtime.list_workers(), time.monotonic(), {}
                    used = self._usage(self._listed, held, plan.worker_id)
                check_admission(takes, used, self.capacity)
                claim.note(json.dumps(asdict(takes)).encode())
                self._mine[plan.worker_id] = takes
                self._count = lock.bump()
            except OSError as exc:  # a full or read-only state dir: nothing is made
                claim.release()
                raise LaunchError("state", f"cannot note the launch in {self.state.path}: {exc.strerror}") from exc

    def _usage(self, listed: Sequence[WorkerState] | None, held: Collection[str], exclude: str | None,
               notes: dict[str, bytes] | None = None, mine: bool = False) -> Usage:
        if notes is None:
            notes = self.state.launching()  # first: a launch that ends meanwhile is in the listing after
        extra = {**(self._mine if mine else {}), **{w: _noted(data) for w, data in notes.items()}}
        found = self.runtime.list_workers() if listed is None else listed
        total, seen = Usage(), set[str]()
        for w in found:
            kept = w.state == WorkerStatus.EXITED and w.worker_id in held
            if w.worker_id == exclude or (w.state in OVER and not kept):
                continue
            took = self._held_by(w)
            if took is not None:
                total, seen = total + took, seen | {w.worker_id}
        for wid, took in extra.items():
            if wid != exclude and wid not in seen:
                total = total + took
        return total

    def _held_by(self, w: WorkerState) -> Usage | None:
        """What a container was given: its labels, or (made before berth labelled it) its description."""
        margin = self.capacity.memory_margin_mb
        held = w.decoded.held
        if held is not None:
            return Usage.of(*held, margin)
        try:
            req = self.runtime.describe(w.worker_id).request
            return Usage.of(int(req.get("memory_mb") or 0), int(req.get("cpu_percent") or 0),
                            int(req.get("pids_limit") or 0), margin)
        except (BerthError, ValueError, TypeError):
            return None  # gone since the listing


def _noted(data: bytes) -> Usage:
    try:
        fields = json.loads(data)
        return Usage(**{k: int(fields[k]) for k in ("memory_mb", "cpu_percent", "pids", "workers")})
    except (ValueError, KeyError, TypeError):
        return Usage()  # not a note berth wrote (made whole under the admission lock, read under it)
