"""``berth agent``: the node's supervisor, fed from its assignment document in ZooKeeper.

Failure semantics, as Storm's supervisor has them: losing the connection or the session never
stops a worker. While ZooKeeper is away the agent keeps supervising from the last document it
read, pauses its writes and reports itself degraded; on a new session it registers again (kazoo
does not re-create ephemeral znodes) and reads its document again. Only a document actually read
removes workers: a missing znode, a refused read, an unreachable ensemble or a document that does
not parse never mean "run nothing". The one exception is opt-in fencing (``fence_after_s``), for
operators who prefer no duplicate workers over availability (``fencing``).

Where the agent stands, and what it does on each event, is ``agentstate``'s table of phases; this
module carries its actions out. One thread, the agent's loop, makes every decision, write and read
of its own; kazoo's threads (the connection listener, the watches' callbacks) and the supervisor's
only post an event and wake it. The watches are kazoo's recipes (``watches``): the node's directory
(enrolled or not), its registration (its lease) and its document, which the agent also reads itself
each time it holds its registration again (the only read that lifts a fence).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from .._core.clusterconfig import ClusterSection
from .._exceptions import ClusterError
from .._service.assignments import Assignments, parse_document
from .._service.bus import Event as SupervisorEvent
from .._service.bus import PassDone, Transition
from .._service.supervisor import Supervisor
from .agentstate import (
    ActionFailed,
    AgentMachine,
    Connected,
    Disconnected,
    Do,
    DocumentApplied,
    DocumentDelivered,
    EnrolmentChanged,
    Event,
    Limits,
    ReadPostponed,
    Refused,
    RegistrationChanged,
    Started,
    Stop,
    SupervisorProgress,
    Tick,
)
from .cache import DocumentCache, write_status
from .capacity import Capacity, check_capacity, node_capacity
from .documents import DocumentStatus, NodeState, decode_assignment, now, version_of
from .fencing import fence_after, warn_if_no_room
from .layout import Credential, ZkLayout, node_user
from .registration import REFUSED_RETRY_S, RETRY_S, Registrar
from .reporting import Reporter
from .watches import Watches
from .zk import UNAVAILABLE, Connection, ConnState, explain

log = logging.getLogger("berth.agent")

IDLE_S = 30.0
"""The longest the loop sleeps with nothing due (everything it waits for wakes it)."""


class Agent:
    def __init__(self, supervisor: Supervisor, hosts: str, cred: Credential,
                 settings: ClusterSection | None = None, capacity: Capacity | None = None) -> None:
        self.sup = supervisor
        self.settings = settings or supervisor.config.cluster
        self.node = supervisor.config.node.name
        if cred.user != node_user(self.node):
            raise ClusterError("auth_file", f"holds the identity {cred.user!r}; node {self.node!r} is "
                                            f"{node_user(self.node)!r} (berth cluster add-node makes it)")
        self.layout = ZkLayout(self.settings.root)
        self.capacity = capacity or node_capacity(supervisor.config)
        self.dir = Path(supervisor.config.state_dir, "cluster")
        self.cache = DocumentCache(self.dir)
        self.source = f"zk:{self.layout.assignment(self.node)}"
        supervisor.fed_by = self.source  # ZooKeeper decides what this node runs, not its API
        self.machine = AgentMachine(Limits(fence_after=self.settings.fence_after_s))
        self.document: DocumentStatus | None = None
        """The last document's status as read (applied, rejected, missing, …), for the reports."""
        self.counters = {"documents_applied": 0, "documents_rejected": 0}
        self.apply_listeners: list[Callable[[str, float], None]] = []
        """Called with (version, time.time()) as a document read from ZooKeeper starts to apply."""
        self._cond = threading.Condition()
        self._events: deque[Event] = deque()
        self._delivered: tuple[bytes | None, ZnodeStat | None] | None = None
        self._supervisor_moved = self._transitions = False
        self._quit = False
        self._supervising = False
        self._judged: str | None = None
        """The last version applied or rejected: delivered again (read after a cut), it is not news."""
        self._floor = 0
        """The mzxid of the last document the agent read itself: a delivery older than it is stale."""
        self._dead_after_s: float | None = None
        self.conn = Connection(hosts, cred, self.settings.session_timeout_s, self.settings.reconnect_max_delay_s,
                               on_change=self._wake)
        self.registrar = Registrar(self.conn, self.layout, self.node, cred.user, self.capacity)
        self.reporter = Reporter(self.conn, self.layout, self.node, cred.digest_id, supervisor,
                                 self.settings.state_interval_s)
        self.watches = Watches(self.conn.client, self._wake)
        self._thread: threading.Thread | None = None
        supervisor.subscribe(self._on_supervisor)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor (its lock, its persisted desired state: nothing is removed until
        that is known), run from the cached document if the supervisor has not a newer one, then
        connect in the background."""
        self.sup.start()
        self._supervising = True
        try:
            cached = self.cache.load(self.node)
        except ClusterError as exc:
            log.error("ignoring the cached document: %s", exc)
            cached = None
        version = None
        if self.sup.loaded and self.sup.version and (cached is None or cached.version == self.sup.version):
            version = self._judged = self.sup.version
            self.document = DocumentStatus(version=version, status="cached")
            with contextlib.suppress(ClusterError):  # how long the coordinator waits before moving workers
                self._set_dead_after(decode_assignment(cached.raw, self.node).dead_after_s if cached else None)
        elif cached is not None and self._apply(cached.raw, cached.version, from_cache=True):
            version = cached.version
        self._handle(Started(since=self.conn.state.down_since or time.monotonic(), version=version))
        self.conn.start()
        self.watches.data(self.layout.node(self.node), lambda _d, _s: self._post(EnrolmentChanged()))
        self.watches.data(self.layout.live(self.node),
                          lambda _d, stat: self._post(RegistrationChanged(stat.ephemeralOwner if stat else None)))
        self._thread = threading.Thread(target=self._loop, name="berth-agent", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = False) -> None:
        """Leave ZooKeeper (the session closes, so the registration goes) and stop supervising.

        Workers keep running unless ``drain``: an agent restarted within the coordinator's
        dead-node delay finds them again and nothing moves.
        """
        with self._cond:
            self._quit = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._handle(Stop())
        self.conn.close()
        self.sup.stop(drain=drain)

    # -- what wakes the loop (other threads: record, wake, return) --------------------------------

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _post(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def _on_document(self, data: bytes | None, stat: ZnodeStat | None) -> None:
        with self._cond:
            self._delivered = (data, stat)  # only the latest matters
            self._events.append(DocumentDelivered())
            self._cond.notify_all()

    def _on_supervisor(self, event: SupervisorEvent) -> None:
        """The supervisor's typed events (its threads): the one place the agent hears it."""
        if isinstance(event, (Transition, PassDone)):
            with self._cond:
                self._supervisor_moved = True
                self._transitions = self._transitions or isinstance(event, Transition)
                self._cond.notify_all()

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._quit:
                    return
                if not self._events and not self._supervisor_moved:
                    self._cond.wait(timeout=self._next_wait())
                if self._quit:
                    return
                events, self._events = list(self._events), deque()
                moved, transitions = self._supervisor_moved, self._transitions
                self._supervisor_moved = self._transitions = False
            try:
                self._step(events, moved, transitions)
            except Exception:
                log.exception("agent step failed; continuing")
                with self._cond:
                    self._cond.wait(timeout=RETRY_S)

    def _next_wait(self) -> float:
        if self._link_events(self.conn.state):
            return 0.0
        st, t = self.machine.state, time.monotonic()
        due = [self.machine.due(), self.reporter.due() if st.registered else None]
        return max(0.0, min([IDLE_S, *(d - t for d in due if d is not None)]))

    def _step(self, events: list[Event], moved: bool, transitions: bool) -> None:
        for event in [*self._link_events(self.conn.state), *events]:
            self._handle(event)
        if moved:
            if transitions or self.reporter.news():
                self.reporter.mark()
            self._handle(SupervisorProgress(self.sup.applied_version()))
        self._handle(Tick())
        due = self.reporter.due()
        if self.machine.state.registered and due is not None and time.monotonic() >= due:
            self.reporter.write(self.node_state(), self.registrar.coordinator, time.monotonic())

    def _link_events(self, conn: ConnState) -> list[Event]:
        """What the connection did since the machine last heard (the listener only woke us)."""
        known = self.machine.state.session
        if conn.connected and conn.session_id is not None and conn.session_id != known:
            gone: list[Event] = [Disconnected(time.monotonic())] if known is not None else []
            return [*gone, Connected(conn.session_id)]
        if not conn.connected and known is not None:
            return [Disconnected(conn.down_since if conn.down_since is not None else time.monotonic())]
        return []

    def _handle(self, event: Event) -> None:
        """One event through the machine, then its actions, then the events they give, in order."""
        pending = deque([event])
        while pending:
            ev = pending.popleft()
            before = self.machine.state
            if isinstance(ev, Refused) and ev.problem != before.problem:
                log.error("%s", ev.problem)
            actions = self.machine.handle(ev, time.monotonic())
            if self.machine.state.phase is not before.phase:
                log.info("agent %s -> %s", before.phase, self.machine.state.phase)
            for action in actions:
                try:
                    pending.extend(self._do(action))
                except Exception:
                    log.exception("agent: %s failed; trying again in %.0fs", action, RETRY_S)
                    pending.append(ActionFailed(action, time.monotonic() + RETRY_S))

    def _do(self, action: Do) -> list[Event]:
        st = self.machine.state
        if action is Do.REGISTER and st.session is not None:
            return [self.registrar.register(st.session, time.monotonic())]
        if action is Do.READ_DOCUMENT:
            return self._read_document()
        if action is Do.APPLY_DELIVERED:
            return self._apply_delivered()
        if action is Do.STOP_WORKERS:
            log.warning("no ZooKeeper for %.0fs (fencing after %.0fs): stopping every worker until a document is "
                        "read", self._away(), self.machine.limits.fence_after or 0.0)
            self.sup.set_assignments(Assignments(), version=None)
        elif action is Do.WARN_PRESUMED_DEAD:
            log.warning("no ZooKeeper for %.0fs, the coordinator's dead_after: this node may have been declared dead "
                        "and its workers started elsewhere; they run here too until a document is read (fencing "
                        "is off)", self._away())
        elif action is Do.REPORT:
            self.reporter.mark()
        elif action is Do.WRITE_STATUS:
            self._write_status()
        return []

    def _away(self) -> float:
        since = self.machine.state.offline_since
        return time.monotonic() - since if since is not None else 0.0

    # -- the document --------------------------------------------------------------------------

    def _read_document(self) -> list[Event]:
        """Read the document itself (after every registration: kazoo's watch tells only changes, so
        this read is what says nothing changed during a cut), then make sure it is watched."""
        conn, path = self.conn, self.layout.assignment(self.node)
        try:
            data, stat = conn.call(conn.client.get_async, path)
        except NoNodeError:
            self.watches.data(path, self._on_document)  # it tells when the document is created
            self._missing(path)
            return []
        except NoAuthError:
            self._judge(DocumentStatus(version=self.machine.state.applied, status="forbidden",
                                       reason=f"not allowed to read {path}; keeping the workers of the last document"))
            return [ReadPostponed(time.monotonic() + REFUSED_RETRY_S)]
        except UNAVAILABLE as exc:
            log.info("reading %s postponed: %s", path, explain(exc, path))
            return [ReadPostponed(time.monotonic() + RETRY_S)]
        self.watches.data(path, self._on_document)
        self._floor = max(self._floor, stat.mzxid)
        return self._consider(data, version_of(stat.mzxid), forced=self.machine.state.fenced)

    def _apply_delivered(self) -> list[Event]:
        with self._cond:
            delivered, self._delivered = self._delivered, None
        if delivered is None:
            return []
        data, stat = delivered
        if stat is None or data is None:
            self._missing(self.layout.assignment(self.node))
            return []
        if stat.mzxid < self._floor:
            return []  # read before the document the agent read itself (a callback that came late)
        return self._consider(data, version_of(stat.mzxid), forced=False)

    def _consider(self, raw: bytes, version: str, forced: bool) -> list[Event]:
        if version == self._judged and not forced:
            return []  # read again after a cut: nothing changed
        return [DocumentApplied(version)] if self._apply(raw, version) else []

    def _missing(self, path: str) -> None:
        self._judge(DocumentStatus(version=self.machine.state.applied, status="missing",
                                   reason=f"{path} does not exist; keeping the workers of the last document"),
                    logging.WARNING)

    def _judge(self, status: DocumentStatus, level: int = logging.ERROR, message: str | None = None) -> None:
        self.document = status
        log.log(level, "%s", message or status.reason)
        self.reporter.mark()
        self._write_status()

    def _apply(self, raw: bytes, version: str, from_cache: bool = False) -> bool:
        started = time.time()
        self._judged = version
        try:
            doc = decode_assignment(raw, self.node)
        except ClusterError as exc:
            self.counters["documents_rejected"] += 1
            self._judge(DocumentStatus(version=version, status="rejected", reason=str(exc)),
                        message=f"assignment document {version} rejected, keeping the previous workers: {exc}")
            return False
        for fn in self.apply_listeners:
            fn(version, started)
        self._set_dead_after(doc.dead_after_s)
        parsed = parse_document({"workers": list(doc.workers)}, self.source)
        check_capacity(parsed, self.capacity, self.sup.config.container, self.source)
        rejected = self.sup.set_assignments(parsed, version=version)
        status = "cached" if from_cache else ("partly-applied" if rejected else "applied")
        self.document = DocumentStatus(version=version, status=status,
                                       reason=f"{len(rejected)} entries rejected" if rejected else None)
        self.counters["documents_applied"] += 1
        log.info("assignment document %s %s: %d workers%s", version, status, len(parsed.specs),
                 f", {len(rejected)} rejected" if rejected else "")
        if not from_cache:
            try:
                self.cache.save(raw, version, self.node)
            except OSError as exc:
                log.error("cannot cache the assignment document: %s", exc)
        return True

    def _set_dead_after(self, dead_after: float | None) -> None:
        if dead_after == self._dead_after_s:
            return
        self._dead_after_s = dead_after
        grace, limit = self.sup.settings.grace_s, self.settings.fence_after_s
        self.machine.limits = Limits(fence_after=fence_after(limit, dead_after, grace), dead_after=dead_after)
        warn_if_no_room(self.machine.limits.fence_after, dead_after, grace, self.settings.session_timeout_s)

    def fence_after(self) -> float | None:
        """Seconds without ZooKeeper after which this node stops its workers (None: fencing off)."""
        return self.machine.limits.fence_after

    # -- what it tells -------------------------------------------------------------------------

    def node_state(self) -> NodeState:
        st = self.machine.state
        return self.reporter.node_state(st.session, st.applied, self.document, st.fenced, st.problem)

    def health(self) -> dict[str, Any]:
        conn, st = self.conn.state, self.machine.state
        registered = conn.connected and st.registered
        ok = registered and not st.fenced and st.problem is None
        return {"status": "ok" if ok else "degraded", "node": self.node, "phase": str(st.phase),
                "zookeeper": conn.state, "session": f"{conn.session_id:#x}" if conn.session_id else None,
                "registered": registered, "session_expirations": conn.expirations, "problem": st.problem,
                "fenced": st.fenced, "presumed_dead": st.presumed_dead, "applied_version": st.applied,
                "document": self.document.model_dump() if self.document else None, "supervising": self._supervising,
                "counters": {**self.counters, "registrations": self.registrar.made,
                             "state_writes": self.reporter.writes}}

    def _write_status(self) -> None:
        try:
            write_status(self.dir, {**self.health(), "updated_at": now()})
        except OSError as exc:
            log.error("cannot write the agent status: %s", exc)
