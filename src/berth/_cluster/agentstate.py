"""The agent's state: where the node stands with the cluster, what moves it, what it then does.

Pure: an event in (the connection, the registration, the document, the supervisor's progress,
time passing), a new state and a list of actions out. ``Agent`` carries out the actions (every
ZooKeeper call, the supervisor's desired state) and hands their outcomes back as events, so the
whole of its behaviour can be driven and checked here without threads or an ensemble. Times are
``time.monotonic()`` seconds, given by the caller.

The phases (what the node does; what it leaves for):

- ``starting``: starts its supervisor (lock, persisted desired state, cache). -> offline.
- ``offline``: no ZooKeeper; supervises from the last document read (or its cache), writes
  nothing. -> registering; applying/steady (the session outlived the cut); presumed-dead; fenced.
- ``presumed-dead``: offline for the coordinator's ``dead_after`` with fencing off: its workers
  may now run elsewhere too (said, not acted on). -> registering; applying/steady; fenced.
- ``fenced``: was offline for ``fence_after``: every worker stopped, and so until it has read a
  document itself, registered again. -> applying.
- ``registering``: connected, making its registration (the node's lease). -> applying/steady;
  waiting; offline.
- ``waiting``: connected but cannot register: not enrolled, identity refused, or another agent
  holds the registration. -> registering (a watch says the way is free, or the retry is due).
- ``applying``: registered; the supervisor has not yet run the workers of the last document
  applied. -> steady; registering; waiting; offline.
- ``steady``: registered; the supervisor ran them (restarts since are its business). -> applying
  (a new document); registering; waiting; offline.
- ``stopped``: the agent stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar


class AgentPhase(StrEnum):
    STARTING = "starting"
    OFFLINE = "offline"
    PRESUMED_DEAD = "presumed-dead"
    FENCED = "fenced"
    REGISTERING = "registering"
    WAITING = "waiting"
    APPLYING = "applying"
    STEADY = "steady"
    STOPPED = "stopped"


P = AgentPhase
LEASED = frozenset({P.APPLYING, P.STEADY})
"""The phases in which the node holds its registration and applies what its document says."""
CUT_OFF = frozenset({P.OFFLINE, P.PRESUMED_DEAD})

TRANSITIONS: Mapping[AgentPhase, frozenset[AgentPhase]] = {
    P.STARTING: frozenset({P.OFFLINE, P.STOPPED}),
    P.OFFLINE: frozenset({P.REGISTERING, *LEASED, P.PRESUMED_DEAD, P.FENCED, P.STOPPED}),
    P.PRESUMED_DEAD: frozenset({P.REGISTERING, *LEASED, P.FENCED, P.STOPPED}),
    P.FENCED: frozenset({P.APPLYING, P.STOPPED}),
    P.REGISTERING: frozenset({*LEASED, P.WAITING, P.OFFLINE, P.STOPPED}),
    P.WAITING: frozenset({P.REGISTERING, P.OFFLINE, P.STOPPED}),
    P.APPLYING: frozenset({P.STEADY, P.REGISTERING, P.WAITING, P.OFFLINE, P.STOPPED}),
    P.STEADY: frozenset({P.APPLYING, P.REGISTERING, P.WAITING, P.OFFLINE, P.STOPPED}),
    P.STOPPED: frozenset(),
}
"""Every move between two phases that may happen; staying in a phase (its data changing) always may."""


class Do(StrEnum):
    """What the agent does after a move."""

    REGISTER = "register"
    """Make the registration, or check that the one there is this session's."""
    READ_DOCUMENT = "read-document"
    """Read the document itself and apply it if new (or, fenced, whatever it is); then watch it."""
    APPLY_DELIVERED = "apply-delivered"
    """Apply what the document's watch delivered, if new."""
    STOP_WORKERS = "stop-workers"
    WARN_PRESUMED_DEAD = "warn-presumed-dead"
    REPORT = "report"
    """The node's state znode has news: write it (at most once per ``state_interval_s``)."""
    WRITE_STATUS = "write-status"
    """``status.json``: the operator's view, readable while ZooKeeper is not."""


# -- events ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    since: float
    """When the connection was made (the offline timers count from it)."""
    version: str | None
    """The document the supervisor runs from (persisted or cached); None: none yet."""


@dataclass(frozen=True)
class Connected:
    session: int


@dataclass(frozen=True)
class Disconnected:
    since: float


@dataclass(frozen=True)
class Registered:
    session: int


@dataclass(frozen=True)
class Refused:
    """The registration cannot be made for now, for a reason the operator must hear."""

    problem: str
    retry_at: float


@dataclass(frozen=True)
class RegisterPostponed:
    """ZooKeeper did not answer the registration."""

    retry_at: float


@dataclass(frozen=True)
class ReadPostponed:
    """The document could not be read (no answer, or refused): read it again then."""

    retry_at: float


@dataclass(frozen=True)
class ActionFailed:
    """Carrying ``action`` out raised what nobody foresaw (an unexpected answer, a defect): one whose
    outcome the machine waits for (a registration, a read) is tried again then, never left hanging."""

    action: Do
    retry_at: float


@dataclass(frozen=True)
class RegistrationChanged:
    """The registration znode (watched) now belongs to this session (None: there is none)."""

    owner: int | None


@dataclass(frozen=True)
class EnrolmentChanged:
    """The node's directory (watched) appeared or went."""


@dataclass(frozen=True)
class DocumentDelivered:
    """The document's watch has news the agent has not looked at."""


@dataclass(frozen=True)
class DocumentApplied:
    version: str


@dataclass(frozen=True)
class SupervisorProgress:
    version: str | None
    """The supervisor's applied version: every worker of it runs from its spec."""


@dataclass(frozen=True)
class Tick:
    """Time passed: a due time (``AgentMachine.due``) may have come."""


@dataclass(frozen=True)
class Stop:
    pass


Event = (Started | Connected | Disconnected | Registered | Refused | RegisterPostponed | ReadPostponed
         | ActionFailed | RegistrationChanged | EnrolmentChanged | DocumentDelivered | DocumentApplied
         | SupervisorProgress | Tick | Stop)


# -- the state -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    fence_after: float | None = None
    """Seconds offline after which the workers are stopped (None: fencing off)."""
    dead_after: float | None = None
    """The coordinator's ``dead_after`` from the last document (None: no document said)."""


@dataclass(frozen=True)
class AgentState:
    phase: AgentPhase = P.STARTING
    session: int | None = None
    """The connection's session; None while offline."""
    offline_since: float | None = None
    lease: int | None = None
    """The session the node's registration was made in (it may outlive a short cut)."""
    register_at: float | None = None
    read_at: float | None = None
    problem: str | None = None
    applied: str | None = None
    """The document version handed to the supervisor."""
    supervised: str | None = None
    """The supervisor's applied version, as last seen."""
    presumed_dead: bool = False

    @property
    def registered(self) -> bool:
        return self.lease is not None and self.lease == self.session

    @property
    def fenced(self) -> bool:
        return self.phase is P.FENCED


Ph = TypeVar("Ph", bound=StrEnum)


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a defect of the machine, never of its input."""


def check_move(table: Mapping[Ph, frozenset[Ph]], old: Ph, new: Ph, who: str) -> None:
    """Raise unless ``table`` lets ``old`` go to ``new`` (staying is always allowed)."""
    if new is not old and new not in table[old]:
        raise IllegalTransition(f"{who}: {old} -> {new}")


class AgentMachine:
    """The agent's state and the table it moves by: ``handle`` an event, get the actions."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.state = AgentState()
        self.limits = limits or Limits()

    def _go(self, phase: AgentPhase, **changes: object) -> None:
        check_move(TRANSITIONS, self.state.phase, phase, "agent")
        self.state = replace(self.state, phase=phase, **changes)  # type: ignore[arg-type]

    def _held(self) -> AgentPhase:
        st = self.state
        return P.STEADY if st.applied is not None and st.supervised == st.applied else P.APPLYING

    def handle(self, event: Event, now: float) -> list[Do]:
        st = self.state
        if st.phase is P.STOPPED:
            return []
        match event:
            case Started(since=since, version=version):
                self._go(P.OFFLINE, offline_since=since, applied=version)
                return [Do.WRITE_STATUS]
            case Stop():
                self._go(P.STOPPED)
                return []
            case Connected(session=session):
                return self._connected(session, now)
            case Disconnected(since=since):
                if st.session is None:
                    return []
                self._go(P.FENCED if st.fenced else P.OFFLINE, session=None, offline_since=since,
                         register_at=None, read_at=None)
                return [Do.WRITE_STATUS]
            case Registered(session=session):
                return self._registered(session)
            case Refused(problem=problem, retry_at=retry_at):
                self._go(P.FENCED if st.fenced else P.WAITING, lease=None, problem=problem, register_at=retry_at)
                return [Do.WRITE_STATUS]
            case RegisterPostponed(retry_at=retry_at):
                self._go(P.FENCED if st.fenced else P.REGISTERING, lease=None, register_at=retry_at)
                return []
            case ReadPostponed(retry_at=retry_at):
                self._go(st.phase, read_at=retry_at)
                return []
            case ActionFailed(action=Do.REGISTER, retry_at=retry_at):
                return self.handle(RegisterPostponed(retry_at), now) if st.session is not None else []
            case ActionFailed(action=Do.READ_DOCUMENT | Do.APPLY_DELIVERED, retry_at=retry_at):
                return self.handle(ReadPostponed(retry_at), now)
            case ActionFailed():
                return []  # the others wait for nothing: the next event does what is due
            case RegistrationChanged(owner=owner):
                return self._registration_changed(owner)
            case EnrolmentChanged():
                return self._registration_changed(None) if st.lease is None else []
            case DocumentDelivered():
                if st.registered:
                    return [Do.READ_DOCUMENT] if st.fenced else [Do.APPLY_DELIVERED]
                return []
            case DocumentApplied(version=version):
                self._go(P.APPLYING if st.phase in LEASED or st.fenced else st.phase, applied=version)
                return [Do.REPORT, Do.WRITE_STATUS]
            case SupervisorProgress(version=version):
                self._go(st.phase, supervised=version)
                if st.phase is P.APPLYING and version is not None and version == st.applied:
                    self._go(P.STEADY)
                    return [Do.WRITE_STATUS]
                return []
            case Tick():
                return self._tick(now)
        raise TypeError(f"not an agent event: {event!r}")

    def _connected(self, session: int, now: float) -> list[Do]:
        st = self.state
        if st.session == session:
            return []
        back = {"session": session, "offline_since": None, "presumed_dead": False, "register_at": None}
        if st.lease == session:  # a cut the session outlived: the registration is still there
            self._go(P.FENCED if st.fenced else self._held(), read_at=None, **back)
            return [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]
        self._go(P.FENCED if st.fenced else P.REGISTERING, lease=None, read_at=None, **back)
        return [Do.REGISTER, Do.WRITE_STATUS]

    def _registered(self, session: int) -> list[Do]:
        st = self.state
        if st.phase in LEASED and st.lease == session:
            return []  # a check: the registration there is this session's
        self._go(P.FENCED if st.fenced else self._held(), lease=session, problem=None, register_at=None,
                 read_at=None)
        return [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]

    def _registration_changed(self, owner: int | None) -> list[Do]:
        st = self.state
        if st.session is None or st.phase is P.REGISTERING:
            return []  # offline, or an attempt is under way (or timed)
        if st.lease is not None:
            return [Do.REGISTER] if owner != st.lease else []  # gone under us? make sure, and make it again
        if owner is None:  # the other registration went, or the node was enrolled: try at once
            self._go(P.FENCED if st.fenced else P.REGISTERING, register_at=None)
            return [Do.REGISTER]
        return []

    def _tick(self, now: float) -> list[Do]:
        st, lim = self.state, self.limits
        out: list[Do] = []
        if st.session is None and st.offline_since is not None:
            away = now - st.offline_since
            if st.phase in CUT_OFF and lim.fence_after is not None and away >= lim.fence_after:
                self._go(P.FENCED)
                out += [Do.STOP_WORKERS, Do.WRITE_STATUS]
            if lim.dead_after is not None and not self.state.presumed_dead and away >= lim.dead_after:
                warn = self.state.phase is P.OFFLINE
                self._go(P.PRESUMED_DEAD if warn else self.state.phase, presumed_dead=True)
                out += [Do.WARN_PRESUMED_DEAD, Do.WRITE_STATUS] if warn else [Do.WRITE_STATUS]
            return out
        if st.lease is None and st.register_at is not None and now >= st.register_at:
            self._go(P.FENCED if st.fenced else P.REGISTERING, register_at=None)
            out.append(Do.REGISTER)
        if st.registered and st.read_at is not None and now >= st.read_at:
            self._go(st.phase, read_at=None)
            out.append(Do.READ_DOCUMENT)
        return out

    def due(self) -> float | None:
        """When a ``Tick`` is next needed (None: nothing is timed)."""
        st, lim = self.state, self.limits
        times: list[float] = []
        if st.session is None and st.offline_since is not None and st.phase is not P.STOPPED:
            if lim.fence_after is not None and st.phase in CUT_OFF:
                times.append(st.offline_since + lim.fence_after)
            if lim.dead_after is not None and not st.presumed_dead:
                times.append(st.offline_since + lim.dead_after)
        elif st.session is not None:
            if st.lease is None and st.register_at is not None:
                times.append(st.register_at)
            if st.registered and st.read_at is not None:
                times.append(st.read_at)
        return min(times, default=None)
