"""What the supervisor tells whoever listens (metrics, the cluster agent, tests): typed events.

Each event is a frozen dataclass; a listener gets every event and keeps the kinds it wants. They
are told outside the supervisor's lock, in the thread where the thing happened (the loop, an
action of the pool, an API request), so a listener must return quickly; it may call back into the
supervisor. One that raises is logged, and the others are still told.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._runtimes.base import ExitRecord
from .decisions import ExitCause
from .phase import Phase

log = logging.getLogger("berth.supervisor")


@dataclass(frozen=True)
class Transition:
    """A worker changed phase (``old`` -> ``new``), or something happened to it without one (an
    assignment rejected, a worker the supervisor does not track stopped): ``new`` None then."""

    worker_id: str
    old: Phase | None
    new: Phase | None
    reason: str
    line: Mapping[str, Any]
    """The line written to ``events.jsonl`` for it (``ts``, ``from``, ``to``, ``reason`` and the facts)."""


@dataclass(frozen=True)
class Launched:
    worker_id: str
    seconds: float
    restart: bool
    """Started again after an exit (a restart), not for the first time or as a replacement."""


@dataclass(frozen=True)
class LaunchFailed:
    """A launch refused or failed (not one that waits for the node's capacity)."""

    worker_id: str
    error: str


@dataclass(frozen=True)
class Exited:
    worker_id: str
    record: ExitRecord
    cause: ExitCause


@dataclass(frozen=True)
class Forgotten:
    """No longer assigned and gone from the engine: whatever was kept per worker can go."""

    worker_id: str


@dataclass(frozen=True)
class PassDone:
    """A reconcile pass completed."""


@dataclass(frozen=True)
class PassFailed:
    failures: int
    """Failed passes in a row (the engine unreachable, say)."""


Event = Transition | Launched | LaunchFailed | Exited | Forgotten | PassDone | PassFailed
Listener = Callable[[Event], None]


class Bus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def publish(self, event: Event) -> None:
        for listener in self._listeners:  # a copy: subscribing while events go out is safe
            try:
                listener(event)
            except Exception:
                log.exception("a listener of the supervisor's events failed on %s", type(event).__name__)
