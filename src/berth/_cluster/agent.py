"""``berth agent``: the node's supervisor, fed from its assignment document in ZooKeeper.

Failure semantics, as Storm's supervisor has them: losing the connection or the session never
stops a worker. While ZooKeeper is away the agent keeps supervising from the last document it
read, pauses its writes and reports itself degraded; on a new session it registers again (kazoo
does not re-create ephemeral znodes) and reads its document again. Only a document actually read
removes workers: a missing znode, a refused read, an unreachable ensemble or a document that does
not parse never mean "run nothing". The one exception is opt-in fencing (``fence_after_s``), for
operators who prefer no duplicate workers over availability (``fencing``).

All ZooKeeper calls are made from one thread, the agent's loop; kazoo's threads (the connection
listener, watch callbacks) and the supervisor's only set flags and wake it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError

from .._core.clusterconfig import ClusterSection
from .._exceptions import ClusterError
from .._service.assignments import parse_document
from .._service.bus import Event, PassDone, Transition
from .._service.supervisor import Supervisor
from .._version import __version__
from .cache import DocumentCache
from .capacity import Capacity, check_capacity, node_capacity
from .documents import (
    DocumentStatus,
    Registration,
    coordinator_of,
    decode_assignment,
    decode_registration,
    encode_registration,
    now,
    process_start,
    this_process,
    version_of,
)
from .fencing import Fencing
from .layout import Credential, ZkLayout, live_acl, node_user
from .reporting import Reporting
from .zk import UNAVAILABLE, Connection, ConnState, explain

log = logging.getLogger("berth.agent")

RETRY_S = 1.0
"""How soon a failed registration or read is tried again while connected (never a busy loop)."""


class Agent(Reporting, Fencing):
    def __init__(self, supervisor: Supervisor, hosts: str, cred: Credential,
                 settings: ClusterSection | None = None, capacity: Capacity | None = None) -> None:
        self.sup = supervisor
        self.settings = settings or supervisor.config.cluster
        self.node = supervisor.config.node.name
        if cred.user != node_user(self.node):
            raise ClusterError("auth_file", f"holds the identity {cred.user!r}; node {self.node!r} is "
                                            f"{node_user(self.node)!r} (berth cluster add-node makes it)")
        self.cred = cred
        self.layout = ZkLayout(self.settings.root)
        self.capacity = capacity or node_capacity(supervisor.config)
        self.dir = Path(supervisor.config.state_dir, "cluster")
        self.cache = DocumentCache(self.dir)
        self.source = f"zk:{self.layout.assignment(self.node)}"
        supervisor.fed_by = self.source  # ZooKeeper decides what this node runs, not its API
        self._cond = threading.Condition()
        self._doc_dirty = True
        self._state_dirty = True
        self._register_due = 0.0
        self._read_due = 0.0
        self._quit = False
        self._registered: int | None = None
        self._problem: str | None = None
        self._coordinator: str | None = None
        self._applied: str | None = None
        self._doc: DocumentStatus | None = None
        self._fenced = False
        self._presumed_dead = False
        self._dead_after_s: float | None = None
        self._supervising = False
        self._last_state_write = 0.0
        self._reported_version: str | None = None
        self._reported_engine: frozenset[tuple[str, str, str]] = frozenset()
        self._seen_conn: ConnState | None = None
        self.counters = {"documents_applied": 0, "documents_rejected": 0, "registrations": 0, "state_writes": 0}
        self.apply_listeners: list[Callable[[str, float], None]] = []
        """Called with (version, time.time()) as a document read from ZooKeeper starts to apply."""
        self._me = this_process()
        self.conn = Connection(hosts, cred, self.settings.session_timeout_s, self.settings.reconnect_max_delay_s,
                               on_change=self._poke)
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
        if self.sup.loaded and self.sup.version and (cached is None or cached.version == self.sup.version):
            self._applied = self.sup.version
            self._doc = DocumentStatus(version=self._applied, status="cached")
            with contextlib.suppress(ClusterError):  # how long the coordinator waits before moving workers
                self._dead_after_s = decode_assignment(cached.raw, self.node).dead_after_s if cached else None
        elif cached is not None:
            self._apply(cached.raw, cached.version, from_cache=True)
        self._write_status()
        self.conn.start()
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
        self.conn.close()
        self.sup.stop(drain=drain)

    def _poke(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_supervisor(self, event: Event) -> None:
        if isinstance(event, Transition) or (isinstance(event, PassDone) and self._report_due()):
            with self._cond:
                self._state_dirty = True
                self._cond.notify_all()

    def _on_document_event(self, _event: Any) -> None:
        # kazoo's callback thread: a change, a deletion, or the connection dropping the watch.
        with self._cond:
            self._doc_dirty = True
            self._read_due = 0.0
            self._cond.notify_all()

    def _on_own_registration(self, event: Any) -> None:
        if getattr(event, "type", None) == "DELETED":  # removed under a live session: register again
            with self._cond:
                self._registered, self._register_due = None, 0.0
                self._cond.notify_all()

    def _on_registration_event(self, _event: Any) -> None:
        with self._cond:
            self._register_due = 0.0
            self._cond.notify_all()

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._quit:
                    return
                self._cond.wait(timeout=self._next_wait())
                if self._quit:
                    return
            try:
                self._step()
            except Exception:
                log.exception("agent step failed; continuing")
                with self._cond:
                    self._cond.wait(timeout=RETRY_S)

    def _next_wait(self) -> float:
        conn = self.conn.state
        t = time.monotonic()
        waits = [30.0]
        if conn != self._seen_conn:
            return 0.0
        if conn.connected:
            if conn.session_id != self._registered:
                waits.append(self._register_due - t)
            if self._doc_dirty and conn.session_id == self._registered:
                waits.append(self._read_due - t)
            if self._state_dirty and conn.session_id == self._registered:
                waits.append(self._last_state_write + self.settings.state_interval_s - t)
        waits += [at - t for at in self._cut_off_due(conn)]
        return max(0.0, min(waits))

    def _step(self) -> None:
        conn = self.conn.state
        if conn != self._seen_conn:
            if conn.connected and (self._seen_conn is None or not self._seen_conn.connected):
                # kazoo dropped every watch with the connection: read again, which sets it again.
                self._doc_dirty, self._state_dirty, self._read_due = True, True, 0.0
                self._presumed_dead = False
            self._seen_conn = conn
            self._write_status()
        t = time.monotonic()
        if not conn.connected:
            self._cut_off(conn)
            return
        if conn.session_id != self._registered and t >= self._register_due:
            self._register(conn)
        if conn.session_id != self._registered:
            return  # the node's registration is its lease: no reading, no reporting without it
        if self._doc_dirty and t >= self._read_due:
            self._read_document()
        if self._state_dirty and t >= self._last_state_write + self.settings.state_interval_s:
            self._write_state(conn)

    # -- registration --------------------------------------------------------------------------

    def _register(self, conn: ConnState) -> None:
        c, path = self.conn, self.layout.live(self.node)
        try:
            if self._coordinator is None:
                data, _ = c.call(c.client.get_async, self.layout.node(self.node))
                self._coordinator = coordinator_of(data)
            body = self._registration()
            try:
                c.call(c.client.create_async, path, body, acl=live_acl(self._coordinator), ephemeral=True)
            except NodeExistsError:
                if not self._replace_stale(path, conn):
                    return
                c.call(c.client.create_async, path, body, acl=live_acl(self._coordinator), ephemeral=True)
        except NoNodeError:
            self._problem_now(f"node {self.node!r} is not enrolled (berth cluster add-node {self.node})")
            c.client.exists_async(self.layout.node(self.node), watch=self._on_registration_event)
            self._register_due = time.monotonic() + 10 * RETRY_S
            return
        except NoAuthError:
            self._problem_now(f"ZooKeeper refused identity {self.cred.user!r} for node {self.node!r}: "
                              "wrong credential, or the node was enrolled with another one")
            self._register_due = time.monotonic() + 10 * RETRY_S
            return
        except (*UNAVAILABLE, NodeExistsError) as exc:
            log.info("registration postponed: %s", explain(exc, path))
            self._register_due = time.monotonic() + RETRY_S
            return
        except ClusterError as exc:
            self._problem_now(str(exc))
            self._register_due = time.monotonic() + 10 * RETRY_S
            return
        self._registered = conn.session_id
        self._problem = None
        self.counters["registrations"] += 1
        c.client.exists_async(path, watch=self._on_own_registration)
        self._state_dirty = True
        log.info("registered %s (session %#x)", path, conn.session_id or 0)
        self._write_status()

    def _replace_stale(self, path: str, conn: ConnState) -> bool:
        """A ``live`` znode exists: ours from this session, a dead process's, or another agent's."""
        c = self.conn
        data, stat = c.call(c.client.get_async, path, watch=self._on_registration_event)
        if stat.ephemeralOwner == conn.session_id:  # ours: a create retried after a lost answer
            self._mark_registered(conn)
            return False
        try:
            other = decode_registration(data, self.node)
        except ClusterError:
            other = None
        host, _pid, _start, boot = self._me
        if other is not None and other.host == host and other.boot_id == boot and \
                process_start(other.pid) != other.pid_start:
            log.info("removing the registration of a previous agent of this node (pid %d is gone)", other.pid)
            with contextlib.suppress(NoNodeError):
                c.call(c.client.delete_async, path, version=stat.version)
            return True
        who = f"pid {other.pid} on {other.host}" if other else "an unknown agent"
        self._problem_now(f"node {self.node!r} is registered by {who} (session {stat.ephemeralOwner:#x}); "
                          "waiting for that registration to end")
        self._register_due = time.monotonic() + 10 * RETRY_S  # the watch set above wakes us sooner
        return False

    def _mark_registered(self, conn: ConnState) -> None:
        self._registered = conn.session_id
        self._problem = None
        self._write_status()

    def _registration(self) -> bytes:
        host, pid, start, boot = self._me
        return encode_registration(Registration(node=self.node, berth_version=__version__, host=host, pid=pid,
                                                pid_start=start, boot_id=boot, started_at=now(),
                                                capacity=self.capacity))

    def _problem_now(self, text: str) -> None:
        if text != self._problem:
            log.error("%s", text)
            self._problem = text
            self._state_dirty = True
            self._write_status()

    # -- the document --------------------------------------------------------------------------

    def _read_document(self) -> None:
        c, path = self.conn, self.layout.assignment(self.node)
        with self._cond:
            self._doc_dirty = False
        try:
            data, stat = c.call(c.client.get_async, path, watch=self._on_document_event)
        except NoNodeError:
            self._doc = DocumentStatus(version=self._applied, status="missing",
                                       reason=f"{path} does not exist; keeping the workers of the last document")
            log.warning("%s", self._doc.reason)
            try:  # wake up when it is created (or right away, if it was created meanwhile)
                if c.call(c.client.exists_async, path, watch=self._on_document_event) is not None:
                    self._doc_dirty = True
            except UNAVAILABLE:
                self._doc_dirty = True
            self._state_dirty = True
            self._write_status()
            return
        except NoAuthError:
            self._doc = DocumentStatus(version=self._applied, status="forbidden",
                                       reason=f"not allowed to read {path}; keeping the workers of the last document")
            log.error("%s", self._doc.reason)
            self._read_due, self._doc_dirty, self._state_dirty = time.monotonic() + 10 * RETRY_S, True, True
            self._write_status()
            return
        except UNAVAILABLE as exc:
            log.info("reading %s postponed: %s", path, explain(exc, path))
            self._doc_dirty, self._read_due = True, time.monotonic() + RETRY_S
            return
        version = version_of(stat.mzxid)
        if version == self._applied and not self._fenced:
            return  # read again after a reconnection: nothing changed
        self._apply(data, version)

    def _apply(self, raw: bytes, version: str, from_cache: bool = False) -> None:
        started = time.time()
        try:
            doc = decode_assignment(raw, self.node)
        except ClusterError as exc:
            self.counters["documents_rejected"] += 1
            self._doc = DocumentStatus(version=version, status="rejected", reason=str(exc))
            log.error("assignment document %s rejected, keeping the previous workers: %s", version, exc)
            self._state_dirty = True
            self._write_status()
            return
        for fn in self.apply_listeners:
            fn(version, started)
        if doc.dead_after_s != self._dead_after_s:
            self._dead_after_s = doc.dead_after_s
            self._check_fencing()
        parsed = parse_document({"workers": list(doc.workers)}, self.source)
        check_capacity(parsed, self.capacity, self.sup.config.container, self.source)
        rejected = self.sup.set_assignments(parsed, version=version)
        self._applied, self._fenced = version, False
        status = "cached" if from_cache else ("partly-applied" if rejected else "applied")
        self._doc = DocumentStatus(version=version, status=status,
                                   reason=f"{len(rejected)} entries rejected" if rejected else None)
        self.counters["documents_applied"] += 1
        log.info("assignment document %s %s: %d workers%s", version, status, len(parsed.specs),
                 f", {len(rejected)} rejected" if rejected else "")
        if not from_cache:
            try:
                self.cache.save(raw, version, self.node)
            except OSError as exc:
                log.error("cannot cache the assignment document: %s", exc)
        self._state_dirty = True
        self._write_status()
