"""``berth schedule``: the coordinator. It places workers and writes every node's document.

One coordinator is active at a time (a kazoo lock); the others wait for it. A pass reads the
cluster, places (``placement.place``) and writes every changed node document, the worker-id
counters and the topologies in one ZooKeeper transaction. Each write carries the version it was
computed from, and the transaction checks that the coordinator still holds the lock: a pass that
raced with another writer, or a coordinator that lost its session meanwhile, writes nothing.

A node whose registration disappeared is left alone at first (its agent may be restarting, or
cut off while its workers still run); only once it has been gone for ``dead_after_s`` (well past
the session timeout that removed its registration) are its workers placed elsewhere, under new
ids, and its document emptied, so that its agent stops the old copies when it comes back.

Whether it is the active coordinator, and when it runs a pass, is ``coordstate``'s table; what it
watches (the nodes, their registrations, the topologies, the drains and, during a rolling
replacement, the nodes' reports) are kazoo's recipes (``watches``), which only wake it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kazoo.exceptions import BadVersionError, CancelledError, KazooException, LockTimeout, NodeExistsError, NoNodeError

from .._core.clusterconfig import ClusterSection
from .._core.spec import WorkerSpec
from .._exceptions import ClusterError
from .admin import NodeView, read_cluster
from .agentstate import Connected, Disconnected, Stop, Tick
from .capacity import Capacity, capped
from .coordstate import Changed, CoDo, CoEvent, CoordinatorMachine, Liveness, LockAcquired, PassDone, PassFailed
from .documents import (
    FORMAT,
    dump_json,
    encode_assignment,
    load_json,
    now,
    version_of,
)
from .drains import STOPPING, read_drains
from .layout import Credential, ZkLayout, coordinator_only
from .placement import NodeInput, Placement, Topology, parse_topologies, place
from .waiting import Convergence, Waiting
from .watches import Wakeup, Watches
from .zk import UNAVAILABLE, Connection, explain

log = logging.getLogger("berth.schedule")

PASS_TRIES = 5
IDLE_S = 30.0
"""The longest a follower sleeps with nothing due (every change it waits for wakes it)."""
REPORTS = "reports"
"""The watches of the nodes' reports, wanted only during a rolling replacement."""


@dataclass
class PassResult:
    versions: dict[str, str]
    """Every node with a document: the version it should apply."""
    written: list[str]
    placement: Placement
    views: dict[str, NodeView]
    topologies_version: str | None = None


def _dump(spec: WorkerSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {"worker_id": spec.worker_id}


class Coordinator:
    def __init__(self, hosts: str, cred: Credential, settings: ClusterSection, dead_after_s: float) -> None:
        if dead_after_s < settings.session_timeout_s:
            raise ClusterError("dead_after", f"must be at least the session timeout ({settings.session_timeout_s:g}s)")
        self.layout = ZkLayout(settings.root)
        self.settings = settings
        self.dead_after_s = dead_after_s
        self.identifier = f"{socket.gethostname()}:{os.getpid()}"
        self.wakeup = Wakeup()
        """Poked by every watch and connection change: what a follower and the waits wait on."""
        self.liveness = Liveness(dead_after_s)
        self.machine = CoordinatorMachine(self.liveness)
        self._capacity: dict[str, Capacity] = {}
        self._seen_nodes: list[str] = []
        """The nodes the last pass of ``follow`` read (whose reports a rolling replacement watches)."""
        self.lock: Any = None
        self._waiting: Any = None
        """The lock a standby is waiting for (``cancel_wait`` ends the wait)."""
        self.conn = Connection(hosts, cred, settings.session_timeout_s, settings.reconnect_max_delay_s,
                               on_change=self.wakeup.poke, default_acl=coordinator_only(cred.digest_id), patient=True)
        self.watches = Watches(self.conn.client, self.wakeup.poke)
        self.waiting = Waiting(self.conn, self.layout, self.watches, self.wakeup)

    def connect(self, timeout_s: float = 15.0) -> None:
        self.conn.start_and_wait(timeout_s)

    def close(self) -> None:
        if self.lock is not None:
            try:
                self.lock.release()
            except Exception as exc:  # the session may be gone already; the lock went with it
                log.info("releasing the lock: %s", exc)
        self.conn.close()

    def wake(self) -> None:
        """From a signal handler or another thread: have a follower look again (at its stop flag)."""
        self.wakeup.poke()

    def watch_reports(self, names: Iterable[str]) -> None:
        """Wake on every report of these nodes (until ``unwatch_reports``)."""
        for name in names:
            self.watches.data(self.layout.state(name), group=REPORTS)

    def unwatch_reports(self) -> None:
        self.watches.release(REPORTS)

    # -- what the one-shot commands wait for (``waiting``) ----------------------------------------

    def schedule_state(self) -> dict[str, Any]:
        return self.waiting.schedule_state()

    def wait_for_pass(self, version: str | None, timeout_s: float, key: str = "topologies_version"
                      ) -> tuple[dict[str, str], dict[str, int]]:
        return self.waiting.wait_for_pass(version, timeout_s, key)

    def converge(self, versions: Mapping[str, str], timeout_s: float, running: bool = True) -> Convergence:
        return self.waiting.converge(versions, timeout_s, running)

    # -- topologies ----------------------------------------------------------------------------

    def store_topologies(self, topologies: Mapping[str, Topology]) -> str:
        raw = dump_json({"format": FORMAT, "topologies": {k: v.model_dump(mode="json") for k, v in topologies.items()}})
        conn, path = self.conn, self.layout.topologies
        try:
            try:
                stat = conn.call(conn.client.set_async, path, raw)
            except NoNodeError:
                conn.call(conn.client.create_async, path, raw)  # the client's default ACL: coordinator only
                stat = conn.call(conn.client.exists_async, path)
        except UNAVAILABLE as exc:
            raise ClusterError("zk", f"storing the topologies: {explain(exc, path)}") from exc
        return version_of(stat.mzxid)

    def read_topologies(self) -> tuple[dict[str, Topology], str | None]:
        conn, path = self.conn, self.layout.topologies
        try:
            data, stat = conn.call(conn.client.get_async, path)
        except NoNodeError:
            return {}, None
        doc = load_json(data, "topologies")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ClusterError("topologies", f"{path} has an unknown format")
        return parse_topologies({"topologies": doc.get("topologies")}), version_of(stat.mzxid)

    # -- one pass ------------------------------------------------------------------------------

    def run_pass(self) -> PassResult:
        for _ in range(PASS_TRIES):
            result = self._try_pass()
            if result is not None:
                return result
        raise ClusterError("schedule", f"the cluster kept changing under the pass ({PASS_TRIES} tries)")

    def roll_out(self, timeout_s: float) -> PassResult:
        """Passes until no rolling replacement is left (each waits for the workers being replaced
        to run their new spec, as the nodes' reports say), or until ``timeout_s``; the last pass."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                seen = self.wakeup.mark()
                result = self.run_pass()
                if not result.placement.rolling or time.monotonic() >= deadline:
                    return result
                self.watch_reports(result.views)
                self.wakeup.wait(seen, min(1.0, deadline - time.monotonic()))
        finally:
            self.unwatch_reports()

    def _inputs(self, views: Mapping[str, NodeView], drains: Mapping[str, str]) -> list[NodeInput]:
        """What placement is told of each node. A node without a document gets nothing (nobody could
        write its workers there); a drained one's workers no longer count, and go once stopping."""
        inputs = []
        t = time.monotonic()
        for name, v in views.items():
            if v.live is not None:  # what the node says it offers, within this coordinator's own limits
                self._capacity[name] = capped(v.live.capacity, self.settings)
            dead = self.liveness.see(name, v.live is not None, t)
            capacity = self._capacity.get(name) if v.doc_stat_version is not None else None
            workers = [] if drains.get(name) == STOPPING else v.workers
            inputs.append(NodeInput(name, capacity, v.live is not None, dead, workers, v.ready(),
                                    draining=name in drains))
        return inputs

    def plan(self, drains: Mapping[str, str]) -> Placement:
        """The placement a pass would write with these drains, writing nothing."""
        topologies, _ = self.read_topologies()
        counters, _ = self._read_schedule_state()
        return place(topologies, self._inputs(read_cluster(self.conn, self.layout), drains), counters)

    def _try_pass(self) -> PassResult | None:
        conn = self.conn
        topologies, topo_version = self.read_topologies()
        counters, state_version = self._read_schedule_state()
        drains, drain_version = read_drains(conn, self.layout)
        views = read_cluster(conn, self.layout)
        inputs = self._inputs(views, drains)
        placement = place(topologies, inputs, counters)
        txn = conn.client.transaction()
        if self.lock is not None and self.lock.node:
            txn.check(f"{self.layout.lock}/{self.lock.node}", 0)  # fencing: only while we hold the lock
        written = []
        for name, specs in placement.docs.items():
            v = views[name]
            if [_dump(s) for s in specs] == [_dump(s) for s in v.workers] and not v.doc_damaged \
                    and v.doc_dead_after_s == self.dead_after_s:  # (a node's bad report is no reason)
                continue
            if v.doc_stat_version is None:
                continue  # no document znode: the node is half-enrolled; add-node makes it
            txn.set_data(self.layout.assignment(name), encode_assignment(
                name, [_dump(s) for s in specs], dead_after_s=self.dead_after_s), version=v.doc_stat_version)
            written.append(name)
        body = dump_json({"format": FORMAT, "counters": placement.counters, "coordinator": self.identifier,
                          "topologies_version": topo_version, "pass_at": now(),
                          "unplaced": placement.unplaced, "stranded": placement.stranded,
                          "rolling": placement.rolling, "drain_version": drain_version})
        if state_version is None:
            txn.create(self.layout.schedule_state, body)
        else:
            txn.set_data(self.layout.schedule_state, body, version=state_version)
        try:
            results = txn.commit_async().get(timeout=conn.timeout_s)
        except UNAVAILABLE as exc:
            raise ClusterError("zk", f"writing the assignments: {explain(exc, self.layout.assignments)}") from exc
        failed = [r for r in results if isinstance(r, Exception) and type(r).__name__ != "RolledBackError"]
        if any(isinstance(r, BadVersionError | NodeExistsError) for r in failed):
            return None
        if failed:
            if self.lock is not None and isinstance(failed[0], NoNodeError):
                raise ClusterError("schedule", "this coordinator lost its lock (session expired); nothing written")
            raise ClusterError("schedule", f"the transaction failed: {failed[0]!r}")
        offset = 1 if self.lock is not None and self.lock.node else 0
        versions = {n: v.doc_version for n, v in views.items() if v.doc_version}
        for name, res in zip(written, results[offset:], strict=False):
            versions[name] = version_of(res.mzxid)
        for wid, node in placement.moved:
            log.warning("moved %s off %s (gone for more than %.0fs)", wid, node, self.dead_after_s)
        for tid, n in placement.stranded.items():
            log.warning("%d worker(s) of %s stay on a dead node: no live node has room for them", n, tid)
        self.liveness.dealt_with(n.name for n in inputs if n.dead)
        return PassResult({k: v for k, v in versions.items() if v}, written, placement, views, topo_version)

    def _read_schedule_state(self) -> tuple[dict[str, int], int | None]:
        conn = self.conn
        try:
            data, stat = conn.call(conn.client.get_async, self.layout.schedule_state)
        except NoNodeError:
            return {}, None
        doc = load_json(data, "schedule state")
        counters = doc.get("counters") if isinstance(doc, dict) else None
        if not isinstance(counters, dict) or not all(isinstance(v, int) for v in counters.values()):
            raise ClusterError("schedule state", "has no valid worker-id counters")
        return {str(k): int(v) for k, v in counters.items()}, stat.version

    # -- following the cluster -----------------------------------------------------------------

    def acquire(self, blocking: bool, timeout_s: float | None = None) -> bool:
        self.lock = self.conn.client.Lock(self.layout.lock, self.identifier)
        try:
            got = bool(self.lock.acquire(blocking=blocking, timeout=timeout_s))
        except LockTimeout:
            got = False
        if not got:
            self.lock = None
        return got

    def wait_for_lock(self, stop: threading.Event) -> bool:
        """Wait as long as it takes to be the active coordinator (a standby); False once ``stop``
        is set (``cancel_wait`` wakes the wait). kazoo's lock queues again by itself after a lost
        connection or session, so nothing here times out."""
        while not stop.is_set():
            lock = self.conn.client.Lock(self.layout.lock, self.identifier)
            self._waiting = lock
            try:
                if stop.is_set():
                    return False
                if lock.acquire(blocking=True):
                    self.lock = lock
                    return True
            except CancelledError:
                return False
            except (*UNAVAILABLE, KazooException) as exc:
                log.warning("waiting for the coordinator lock: %s", explain(exc, self.layout.lock))
                stop.wait(1.0)  # a second between attempts, whatever else woke the coordinator
            finally:
                self._waiting = None
        return False

    def cancel_wait(self) -> None:
        """From a signal handler or another thread: end ``wait_for_lock``."""
        lock = self._waiting
        if lock is not None:
            lock.cancel()

    def active_coordinator(self) -> str | None:
        try:
            names = self.conn.client.Lock(self.layout.lock).contenders()
        except (NoNodeError, *UNAVAILABLE):
            return None
        return str(names[0]) if names else None

    def follow(self, stop: threading.Event) -> None:
        """Stay the active coordinator (the caller holds the lock) until ``stop``: a pass whenever
        nodes come or go, the topologies or drains change, or a node that left passes
        ``dead_after_s``; back to standby (waiting for the lock) when the session is lost."""
        self.watches.children(self.layout.nodes, self._watch_nodes)
        self.watches.data(self.layout.topologies)
        self.watches.data(self.layout.drains)
        pending: deque[CoDo] = deque(self.machine.handle(LockAcquired(self.conn.state.session_id), time.monotonic()))
        while not stop.is_set():
            seen = self.wakeup.mark()
            while pending and not stop.is_set():
                for event in self._carry_out(pending.popleft(), stop):
                    pending.extend(self.machine.handle(event, time.monotonic()))
            if stop.is_set():
                break
            due = self.machine.due(time.monotonic())
            self.wakeup.wait(seen, IDLE_S if due is None else min(IDLE_S, due - time.monotonic()))
            events: list[CoEvent] = [*self._link_events(), Tick()]
            if self.wakeup.mark() != seen:
                events.append(Changed())
            for event in events:
                pending.extend(self.machine.handle(event, time.monotonic()))
        self.machine.handle(Stop(), time.monotonic())

    def _watch_nodes(self, names: list[str]) -> None:
        # kazoo's callback thread: only start recipes (each on a thread of its own), never wait
        for name in names:
            self.watches.data(self.layout.live(name))

    def _link_events(self) -> list[CoEvent]:
        conn, st = self.conn.state, self.machine.state
        if not conn.connected:
            return [Disconnected(time.monotonic())] if st.connected else []
        if conn.session_id is not None and (not st.connected or conn.session_id != st.session):
            return [Connected(conn.session_id)]
        return []

    def _carry_out(self, action: CoDo, stop: threading.Event) -> list[CoEvent]:
        if action is CoDo.PASS:
            try:
                result = self.run_pass()
            except ClusterError as exc:
                log.error("%s", exc)
                stop.wait(1.0)  # whatever failed, not again at once
                return [PassFailed()]
            self._seen_nodes = list(result.views)
            if result.written:
                log.info("pass: wrote %s; unplaced %s; rolling %s", ", ".join(result.written),
                         result.placement.unplaced or "none", result.placement.rolling or "none")
            return [PassDone(bool(result.placement.rolling))]
        if action is CoDo.WATCH_REPORTS:
            self.watch_reports(self._seen_nodes)
        elif action is CoDo.UNWATCH_REPORTS:
            self.unwatch_reports()
        elif action is CoDo.WAIT_FOR_LOCK:
            log.warning("new ZooKeeper session: the lock went with the old one; waiting to be the active "
                        "coordinator again")
            self.lock = None
            if self.wait_for_lock(stop):
                log.warning("active coordinator again")
                return [LockAcquired(self.conn.state.session_id)]
        return []
