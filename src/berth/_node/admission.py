"""Admission: the sum of what the node's workers hold stays within its capacity.

What a worker holds is what it was given (its memory, cpu and pids limits), counted from the
runtime (every container of the node that is not over, whoever launched it: its labels say what
it got), plus launches under way in any berth process (each notes what it takes beside its claim
in the state dir), plus, for a supervisor, the ended containers of its workers that are only
between two runs. One launch at a time counts and notes, under the state dir's admission lock:
two launches never both fit into the last room, and none waits for another's container to be made.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict

from .._core.config import NodeConfig
from .._core.hostfacts import HostFacts
from .._core.limits import NodeCapacity, Usage, check_admission, node_capacity
from .._core.plan import LABEL_CPU, LABEL_MEMORY, LABEL_PIDS, Plan
from .._exceptions import BerthError, LaunchError
from .._runtimes.base import Runtime, WorkerState, WorkerStatus
from .state import Claim, StateDir

OVER = (WorkerStatus.EXITED, WorkerStatus.MISSING)
"""States in which a container holds nothing (its processes are gone)."""


class Admission:
    def __init__(self, config: NodeConfig, host: HostFacts, runtime: Runtime, state: StateDir) -> None:
        self.config, self.host, self.runtime, self.state = config, host, runtime, state
        self._capacity: NodeCapacity | None = None

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
        raise ``CapacityError``; the note counts until the claim is released."""
        takes = self.takes(plan)
        with self.state.admission():
            check_admission(takes, self._usage(None, held, exclude=plan.worker_id), self.capacity)
            try:
                claim.note(json.dumps(asdict(takes)).encode())
            except OSError as exc:  # a full or read-only state dir: nothing is made
                claim.release()
                raise LaunchError("state", f"cannot note the launch in {self.state.path}: {exc.strerror}") from exc

    def _usage(self, listed: Sequence[WorkerState] | None, held: Collection[str], exclude: str | None,
               notes: dict[str, bytes] | None = None) -> Usage:
        if notes is None:
            try:
                notes = self.state.launching()  # first: a launch that ends meanwhile is in the listing after
            except OSError as exc:
                raise LaunchError("state", f"cannot read the launches under way in {self.state.path}: "
                                  f"{exc.strerror}") from exc
        found = self.runtime.list_workers() if listed is None else listed
        total, seen = Usage(), set[str]()
        for w in found:
            kept = w.state == WorkerStatus.EXITED and w.worker_id in held
            if w.worker_id == exclude or (w.state in OVER and not kept):
                continue
            took = self._held_by(w)
            if took is not None:
                total, seen = total + took, seen | {w.worker_id}
        for wid, data in notes.items():
            if wid != exclude and wid not in seen:
                total = total + _noted(data)
        return total

    def _held_by(self, w: WorkerState) -> Usage | None:
        """What a container was given: its labels, or (made before berth labelled it) its description."""
        margin = self.capacity.memory_margin_mb
        try:
            return Usage.of(int(w.labels[LABEL_MEMORY]), int(w.labels[LABEL_CPU]), int(w.labels[LABEL_PIDS]), margin)
        except (KeyError, ValueError):
            pass
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
