"""The coordinator's state (``berth schedule --follow``): whether it is the active one, and when
it runs a pass. Pure, as the agent's (``agentstate``): events in, actions out; ``Coordinator``
carries the actions out. Times are ``time.monotonic()`` seconds, given by the caller.

The phases:

- ``standby``: waits for the lock (another coordinator is active, or the lock went with this
  one's session). -> active.
- ``active``: holds the lock; a pass whenever the cluster changes (nodes, registrations,
  topologies, drains: watched) or a node has been gone ``dead_after``. -> rolling; offline;
  standby (a new session: the lock went with the old one).
- ``rolling``: active, with a rolling replacement under way: the nodes' reports are watched too,
  and each one makes a pass (which replaces the next few workers). -> active; offline; standby.
- ``offline``: was active, and the connection is lost: no pass (its writes would fail). -> active
  (the session outlived the cut, and the lock with it); standby.
- ``stopped``.

When nodes died is ``Liveness``'s: a node whose registration is gone is dead once this
coordinator has seen it gone for ``dead_after`` (a standby that takes over counts from its own
first look: it cannot know since when).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from .agentstate import Connected, Disconnected, Stop, Tick, check_move


class CoordinatorPhase(StrEnum):
    STANDBY = "standby"
    ACTIVE = "active"
    ROLLING = "rolling"
    OFFLINE = "offline"
    STOPPED = "stopped"


C = CoordinatorPhase
HOLDING = frozenset({C.ACTIVE, C.ROLLING})
"""The phases in which it holds the lock and runs passes."""

TRANSITIONS: Mapping[CoordinatorPhase, frozenset[CoordinatorPhase]] = {
    C.STANDBY: frozenset({C.ACTIVE, C.STOPPED}),
    C.ACTIVE: frozenset({C.ROLLING, C.OFFLINE, C.STANDBY, C.STOPPED}),
    C.ROLLING: frozenset({C.ACTIVE, C.OFFLINE, C.STANDBY, C.STOPPED}),
    C.OFFLINE: frozenset({C.ACTIVE, C.STANDBY, C.STOPPED}),
    C.STOPPED: frozenset(),
}


class CoDo(StrEnum):
    WAIT_FOR_LOCK = "wait-for-lock"
    PASS = "pass"
    WATCH_REPORTS = "watch-reports"
    UNWATCH_REPORTS = "unwatch-reports"


@dataclass(frozen=True)
class LockAcquired:
    session: int | None


@dataclass(frozen=True)
class Changed:
    """A watch fired (or something else woke it): the cluster may have changed."""


@dataclass(frozen=True)
class PassDone:
    rolling: bool
    """A rolling replacement is left for later passes."""


@dataclass(frozen=True)
class PassFailed:
    pass


CoEvent = LockAcquired | Connected | Disconnected | Changed | PassDone | PassFailed | Tick | Stop


class Liveness:
    """Since when each node's registration has been gone, as this coordinator saw it."""

    def __init__(self, dead_after_s: float) -> None:
        self.dead_after_s = dead_after_s
        self.gone_since: dict[str, float] = {}
        self.handled: set[str] = set()
        """Dead nodes a pass has dealt with (their workers moved where there was room)."""

    def see(self, name: str, live: bool, now: float) -> bool:
        """Record what a pass read of ``name``; whether it counts as dead."""
        if live:
            self.gone_since.pop(name, None)
            self.handled.discard(name)
            return False
        return now - self.gone_since.setdefault(name, now) >= self.dead_after_s

    def dealt_with(self, names: Iterable[str]) -> None:
        self.handled.update(names)

    def someone_died(self, now: float) -> bool:
        """A node passed ``dead_after`` since the last pass that dealt with the dead."""
        return any(now - since >= self.dead_after_s and name not in self.handled
                   for name, since in self.gone_since.items())

    def next_death(self, now: float) -> float | None:
        ahead = [since + self.dead_after_s for since in self.gone_since.values() if since + self.dead_after_s > now]
        return min(ahead, default=None)


@dataclass(frozen=True)
class CoordinatorState:
    phase: CoordinatorPhase = C.STANDBY
    session: int | None = None
    """The session the lock was taken in (it goes with that session)."""
    connected: bool = True


class CoordinatorMachine:
    def __init__(self, liveness: Liveness) -> None:
        self.state = CoordinatorState()
        self.liveness = liveness

    def _go(self, phase: CoordinatorPhase, **changes: object) -> None:
        check_move(TRANSITIONS, self.state.phase, phase, "coordinator")
        self.state = replace(self.state, phase=phase, **changes)  # type: ignore[arg-type]

    def handle(self, event: CoEvent, now: float) -> list[CoDo]:
        st = self.state
        if st.phase is C.STOPPED:
            return []
        match event:
            case Stop():
                self._go(C.STOPPED)
                return []
            case LockAcquired(session=session):
                self._go(C.ACTIVE, session=session, connected=True)
                return [CoDo.PASS]
            case Disconnected():
                self._go(C.OFFLINE if st.phase in HOLDING else st.phase, connected=False)
                return []
            case Connected(session=session):
                if st.phase is C.STANDBY:
                    self._go(C.STANDBY, connected=True)
                    return []  # the lock's own wait goes on by itself
                if session != st.session:  # the lock went with the old session
                    self._go(C.STANDBY, session=None, connected=True)
                    return [CoDo.UNWATCH_REPORTS, CoDo.WAIT_FOR_LOCK]
                if st.phase is C.OFFLINE:
                    self._go(C.ACTIVE, connected=True)
                    return [CoDo.PASS]
                return []
            case Changed():
                return [CoDo.PASS] if st.phase in HOLDING else []
            case PassDone(rolling=rolling):
                if st.phase not in HOLDING:
                    return []
                if rolling:  # (again: a node may have come meanwhile)
                    self._go(C.ROLLING)
                    return [CoDo.WATCH_REPORTS]
                if not rolling and st.phase is C.ROLLING:
                    self._go(C.ACTIVE)
                    return [CoDo.UNWATCH_REPORTS]
                return []
            case PassFailed():
                return []  # the next change (or death) makes the next pass
            case Tick():
                return [CoDo.PASS] if st.phase in HOLDING and self.liveness.someone_died(now) else []
        raise TypeError(f"not a coordinator event: {event!r}")

    def due(self, now: float) -> float | None:
        """When a ``Tick`` is next needed: the next node to pass ``dead_after``."""
        return self.liveness.next_death(now) if self.state.phase in HOLDING else None
