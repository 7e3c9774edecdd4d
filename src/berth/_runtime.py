"""The one small interface every runtime implements, and the values it hands back.

A runtime knows how to run a plan and how to observe what it runs; it keeps no memory of its
own that matters: the engine is the source of truth, found again by labels after a restart.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ._plan import Plan


@dataclass(frozen=True)
class WorkerState:
    """What the runtime reports about one worker's container right now."""

    worker_id: str
    container_id: str
    topology_id: str
    port: int
    user: str
    image: str
    state: str
    """``created``, ``running``, ``exited``, … as the engine names it."""
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "restarting")


@dataclass(frozen=True)
class ExitRecord:
    """How one worker ended. ``exit_code`` follows the shell convention (128+N for signal N)."""

    worker_id: str
    container_id: str
    exit_code: int
    signal: int | None
    oom_killed: bool
    started_at: str | None
    finished_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"


def split_status(code: int) -> tuple[int, int | None]:
    """Engines report death by signal N as 128+N; recover N so callers need not guess."""
    if 128 < code <= 128 + 64:
        return code, code - 128
    return code, None


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes


class Runtime(Protocol):
    """What the node needs from a way of running workers. Every call takes a worker id."""

    name: str

    def image_present(self, image: str) -> bool: ...

    def create(self, plan: Plan) -> str:
        """Create (not start) the worker's container; returns its id."""
        ...

    def start(self, worker_id: str) -> None: ...

    def stop(self, worker_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL once the grace period is over."""
        ...

    def force_kill(self, worker_id: str) -> None: ...

    def remove(self, worker_id: str) -> None:
        """Remove the container, running or not; a missing one is not an error."""
        ...

    def inspect(self, worker_id: str) -> WorkerState:
        """Raises WorkerNotFound when there is no such worker."""
        ...

    def memory_usage(self, worker_id: str) -> int: ...

    def exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        """Run argv inside the worker's container, as the worker's user."""
        ...

    def logs(self, worker_id: str) -> bytes: ...

    def list_workers(self) -> list[WorkerState]:
        """Every worker of this node the runtime knows, in any state, from one cheap listing:
        state, labels and exit code are filled in; times, pid and the OOM flag may not be."""
        ...

    def exit_events(self) -> Iterator[ExitRecord | None]:
        """Exit records as they happen, forever, until ``close``.

        Yields ``None`` after each (re)connection, once the runtime is subscribed: the moment a
        caller must reconcile with ``list_workers`` so that nothing that ended while the stream
        was down is lost.
        """
        ...

    def exit_record(self, worker_id: str) -> ExitRecord | None:
        """The exit of a worker that has ended, built from the runtime's own state."""
        ...

    def close(self) -> None: ...
