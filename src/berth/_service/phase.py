"""The supervisor's view of an assigned worker: its ``Phase`` and its ``Assigned`` record.

Not to be confused with the runtime's values (``_runtimes.base``): ``WorkerStatus`` is where a
*container* is in its life (created, running, exited), ``WorkerState`` what the runtime reports
about one container now, ``ExitRecord`` how one container ended. A ``Phase`` is where an
*assignment* is in the supervisor's cycle (pending, running, backoff, …); it outlives any one
container of the worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .._core.spec import WorkerSpec
from .._runtimes.base import ExitRecord


def iso(t: float | None) -> str | None:
    """A wall-clock time as ISO 8601 UTC with microseconds, the one time format of the API."""
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class Phase(StrEnum):
    """Where an assigned worker is in the supervisor's cycle (not a container's status)."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    """Ended and about to be restarted at once (a healthy run, or an operator's kill)."""
    BACKOFF = "backoff"
    CRASH_LOOPING = "crash-looping"
    FAILED = "failed"
    """The launch itself failed for a reason that may pass (engine error); retried with backoff."""
    REJECTED = "rejected"
    """It can never launch as given (policy, identity, missing image): not retried until changed."""
    NO_CAPACITY = "no-capacity"
    """The node's capacity is taken (memory, cpu or pids of the workers it holds): launched once it
    fits, without a failure counted or a backoff."""
    STALLED = "stalled"
    """Its container runs but its PID 1 is stopped (ptrace from inside the worker): it cannot end
    by itself, so its exit would never be seen; killed and started again after ``stalled_after_s``."""
    STOPPING = "stopping"
    STOPPED = "stopped"


WAITING = (Phase.BACKOFF, Phase.CRASH_LOOPING, Phase.FAILED)
"""Phases that end when the worker's backoff is due."""


@dataclass
class Assigned:
    """The supervisor's record of one assigned worker: its spec, phase and restart counters.

    The counters (``restarts``, ``failures``, ``handled_exit``, ``last_exit``) are persisted with
    the desired state, so a restarted supervisor neither reports an exit twice nor forgets a
    crash loop.
    """

    worker_id: str
    spec: WorkerSpec
    phase: Phase = Phase.PENDING
    container_id: str | None = None
    restarts: int = 0
    failures: int = 0
    """Consecutive failed runs; reset by a run that lasted ``healthy_after_s``."""
    next_start: float = 0.0
    """When a waiting worker may start again, on the supervisor's clock."""
    last_exit: ExitRecord | None = None
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    """Wall-clock time of the last phase change."""
    handled_exit: str | None = None
    """Container id whose exit was already turned into a restart decision."""
    operator_stop: str | None = None
    """Container id an operator asked to stop: its exit is not a failure."""
    stalled: str | None = None
    """Container id killed because its PID 1 stayed stopped: its exit is a failure, cause ``stalled``."""
    version: str | None = None
    """The assignment version its running container was launched (or adopted) for."""
    want: Any = None
    """While ``no-capacity``: what it takes of the node's capacity (a ``Usage``), to see when it fits."""
    refused: str | None = None
    """While ``no-capacity``: the field its admission was refused on."""

    def to_dict(self, now: float, wall: float) -> dict[str, Any]:
        wait = max(0.0, self.next_start - now) if self.phase in (*WAITING, Phase.STALLED) else None
        return {
            "worker_id": self.worker_id,
            "state": self.phase.value,
            "container_id": self.container_id,
            "restarts": self.restarts,
            "failures": self.failures,
            "next_start_in_s": None if wait is None else round(wait, 3),
            "next_start_at": None if wait is None else iso(wall + wait),
            "last_exit": self.last_exit.to_dict() if self.last_exit else None,
            "last_error": self.last_error,
            "since": iso(self.since),
            "spec": self.spec.model_dump(mode="json"),
        }

    def counters(self, now: float, wall: float) -> dict[str, Any]:
        """What is persisted of the record (the spec is persisted with the desired state); the
        next start as a wall-clock time, so the time berth was down counts towards it."""
        return {"restarts": self.restarts, "failures": self.failures, "handled_exit": self.handled_exit,
                "last_exit": self.last_exit.to_dict() if self.last_exit else None,
                "last_error": self.last_error, "phase": self.phase.value, "version": self.version,
                "next_start_wall": round(wall + self.next_start - now, 3) if self.phase in WAITING else None}
