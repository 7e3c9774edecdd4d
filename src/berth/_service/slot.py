"""One worker as the supervisor knows it (``WorkerSlot``), and what it tells of it (``SlotView``).

A slot owns everything kept per worker: its assignment (spec, source, and the plan it was
validated with), its phase and counters, the action in flight for it, the stops berth made of its
containers, the exits waiting for that action to end, and the retry of a removal that failed. Its
phase changes only through ``transition`` (checked against ``phase.TRANSITIONS``), called by the
moves below, each of which sets the fields that go with it. The supervisor calls them under its
lock, so nobody sees half a move.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.limits import Usage
from .._core.plan import Plan
from .._core.spec import WorkerSpec, spec_digest
from .._exceptions import BerthError
from .._runtimes.base import ExitRecord
from .assignments import Rejection
from .decisions import ExitDecision, LaunchDecision
from .phase import SETTLED, WAITING, Phase, check_transition

MAX_PLANNED = 16
"""Container ids of one worker whose stop berth made and whose exit has not come yet."""


@dataclass(frozen=True)
class Entry:
    """One accepted entry of the desired state."""

    spec: WorkerSpec
    source: str
    plan: Plan | None = None
    """The plan the entry was validated with, kept for its launch (the node launches it only while
    its user is still who it was); None when read from ``supervisor.json``: planned when needed."""


@dataclass(frozen=True)
class SlotView:
    """What the supervisor says of one assigned worker (the API's ``WorkerOut``, ``berth ps``)."""

    worker_id: str
    phase: Phase
    container_id: str | None
    restarts: int
    failures: int
    """Consecutive failed runs; reset by a run that lasted ``healthy_after_s``."""
    next_start_in_s: float | None
    next_start_at: float | None
    """Wall-clock time (epoch seconds) of the next start, while it waits for one."""
    last_exit: ExitRecord | None
    last_error: str | None
    since: float
    """Wall-clock time of the last phase change."""
    version: str | None
    """The assignment version its running container was launched (or adopted) for."""
    busy: str | None
    """The action in flight for it (launch, stop, replace, stalled), if any."""
    spec: WorkerSpec


@dataclass(eq=False)
class WorkerSlot:
    worker_id: str
    entry: Entry | None = None
    """What it is assigned now; None: not (or no longer) assigned."""
    spec: WorkerSpec | None = None
    """The spec its container runs, or is launched from next; None: never assigned in this run (a
    container of this node that berth only removes)."""
    phase: Phase | None = None
    """None with ``spec``: such a container (its events have no phase)."""
    container_id: str | None = None
    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    """When a waiting (or stalled) worker is due, on the supervisor's clock."""
    last_exit: ExitRecord | None = None
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    handled_exit: str | None = None
    """Container id whose exit was already turned into a restart decision."""
    operator_stop: str | None = None
    """Container id an operator asked to stop: its exit is not a failure."""
    stalled: str | None = None
    """Container id killed because its PID 1 stayed stopped: its exit is a failure, cause ``stalled``."""
    version: str | None = None
    want: Usage | None = None
    """While it needs room: what it takes of the node's capacity, to see when it fits."""
    refusal: BerthError | None = None
    """While ``no-capacity``: why (a ``CapacityError``, its field and reason)."""
    busy: str | None = None
    """The action in flight for it (at most one per worker)."""
    touched: int = -1
    """The supervisor's action count when its last action ended: a pass that listed the engine
    before that leaves it alone."""
    planned: dict[str, None] = field(default_factory=dict)
    """Container ids whose exit berth caused (unassigned, replaced, drained): not crashes."""
    held: list[ExitRecord] = field(default_factory=list)
    """Exits that came while an action was in flight: handled once it is over."""
    stop_retry_at: float | None = None
    """Not assigned: when a removal that failed is tried again."""
    stop_failures: int = 0

    @classmethod
    def for_entry(cls, entry: Entry) -> WorkerSlot:
        return cls(entry.spec.worker_id, entry, entry.spec, Phase.PENDING)

    @property
    def source(self) -> str:
        return self.entry.source if self.entry is not None else "?"

    # -- the one checked move, and the moves that use it --------------------------------------

    def transition(self, new: Phase) -> None:
        """The phase's only way to change: along ``TRANSITIONS`` (``phase.check_transition``)."""
        if self.phase is not None:
            check_transition(self.worker_id, self.phase, new)
        self.phase, self.since = new, time.time()

    def assign(self, entry: Entry) -> None:
        """Assigned (again, or for the first time, a container it only removed until now)."""
        self.entry, self.stop_retry_at, self.stop_failures = entry, None, 0
        if self.phase is None:
            self.spec, self.phase, self.since = entry.spec, Phase.PENDING, time.time()

    def reassigned(self, now: float) -> None:
        """Its assignment changed while it waited: that applies at once, with a fresh backoff."""
        assert self.entry is not None
        self.transition(Phase.PENDING)
        self.spec, self.failures, self.next_start = self.entry.spec, 0, now
        self.last_error, self.want, self.refusal = None, None, None

    def started(self, container_id: str, version: str | None, restart: bool) -> None:
        self.transition(Phase.RUNNING)
        self.container_id, self.version, self.last_error = container_id, version, None
        self.restarts += restart
        self.want, self.refusal = None, None

    def refused(self, exc: BerthError, d: LaunchDecision, now: float) -> None:
        """A launch refused (``decisions.decide_launch_error``)."""
        self.transition(d.phase)
        self.last_error, self.failures = str(exc), d.failures
        self.refusal = exc if d.phase == Phase.NO_CAPACITY else None
        if d.delay is not None:
            self.next_start = now + d.delay

    def failed(self, reason: str, retry_at: float | None) -> None:
        """An action for it raised: retried at ``retry_at`` as a failure (assigned), or its removal
        is retried (``stop_retry_at``: not assigned)."""
        self.transition(Phase.FAILED)
        self.last_error = reason
        if retry_at is not None:
            self.failures, self.next_start = self.failures + 1, retry_at

    def ended(self, ex: ExitRecord, d: ExitDecision, now: float) -> None:
        """Its container's exit, decided (``decisions.decide_exit``)."""
        self.transition(d.phase)
        self.handled_exit, self.last_exit, self.failures = ex.container_id, ex, d.failures
        self.operator_stop, self.stalled, self.next_start = None, None, now + d.delay

    def stall(self, why: str, due: float) -> None:
        self.transition(Phase.STALLED)
        self.next_start, self.last_error = due, why

    def resumed(self) -> None:
        self.transition(Phase.RUNNING)
        self.last_error = None

    def plan_stop(self, container_id: str) -> None:
        self.planned[container_id] = None
        while len(self.planned) > MAX_PLANNED:  # exits that never came (removed while berth was away)
            del self.planned[next(iter(self.planned))]

    # -- what is said and kept of it ------------------------------------------------------------

    def due(self, now: float) -> bool:
        return self.phase not in WAITING or now >= self.next_start

    def settled(self, version: str | None) -> bool:
        """Launched (or adopted) from its current assignment, or as far as it can be."""
        if self.phase in (Phase.PENDING, Phase.STARTING, Phase.STOPPING):
            return False
        return self.phase in SETTLED or self.version == version

    def view(self, now: float, wall: float) -> SlotView | None:
        if self.spec is None or self.phase is None:
            return None  # a container it only removes: not one of the node's assigned workers
        wait = max(0.0, self.next_start - now) if self.phase in (*WAITING, Phase.STALLED) else None
        return SlotView(self.worker_id, self.phase, self.container_id, self.restarts, self.failures,
                        None if wait is None else round(wait, 3), None if wait is None else wall + wait,
                        self.last_exit, self.last_error, self.since, self.version, self.busy, self.spec)

    def rejection(self) -> Rejection | None:
        """Assigned, and it cannot launch as given, or waits for the node's capacity (``retried``)."""
        if self.entry is None:
            return None
        if self.phase == Phase.REJECTED:
            return Rejection(self.source, None, self.worker_id, None, self.last_error or "cannot launch")
        if self.phase == Phase.NO_CAPACITY and self.refusal is not None:
            return Rejection(self.source, None, self.worker_id, self.refusal.field, self.refusal.reason, retried=True)
        return None

    def counters(self, now: float, wall: float) -> dict[str, Any]:
        """What is persisted of it (the spec goes with the desired state); the next start as a
        wall-clock time, so the time berth was down counts towards it."""
        return {"restarts": self.restarts, "failures": self.failures, "handled_exit": self.handled_exit,
                "last_exit": self.last_exit.to_dict() if self.last_exit else None,
                "last_error": self.last_error, "phase": self.phase.value if self.phase else None,
                "version": self.version,
                "next_start_wall": round(wall + self.next_start - now, 3) if self.phase in WAITING else None}

    def restore(self, saved: Mapping[str, Any], saved_spec: WorkerSpec, now: float, wall: float, cap_s: float) -> None:
        """Counters persisted by an earlier run (``counters``). One whose spec changed since keeps
        its history, not its backoff; one rejected stays rejected (not tried again on its own); a
        backoff goes on where it was, never longer than ``cap_s``."""
        self.restarts, self.failures = int(saved.get("restarts") or 0), int(saved.get("failures") or 0)
        self.handled_exit, self.last_error = saved.get("handled_exit"), saved.get("last_error")
        self.version = saved.get("version")
        if saved.get("last_exit"):
            self.last_exit = ExitRecord.from_dict(saved["last_exit"])
        if self.spec is None or spec_digest(saved_spec) != spec_digest(self.spec):
            self.failures = 0
        elif saved.get("phase") == Phase.REJECTED:
            self.phase = Phase.REJECTED
        elif saved.get("phase") in {p.value for p in WAITING}:
            left = float(saved.get("next_start_wall") or 0.0) - wall
            self.phase, self.next_start = Phase(saved["phase"]), now + min(max(0.0, left), cap_s)
