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
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kazoo.exceptions import BadVersionError, CancelledError, KazooException, LockTimeout, NodeExistsError, NoNodeError

from .._core.clusterconfig import ClusterSection
from .._core.spec import WorkerSpec
from .._exceptions import ClusterError
from .admin import NodeView, read_cluster
from .capacity import Capacity, capped
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
from .waiting import Waiting
from .zk import UNAVAILABLE, Connection, explain

log = logging.getLogger("berth.schedule")

PASS_TRIES = 5


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


class Coordinator(Waiting):
    def __init__(self, hosts: str, cred: Credential, settings: ClusterSection, dead_after_s: float) -> None:
        if dead_after_s < settings.session_timeout_s:
            raise ClusterError("dead_after", f"must be at least the session timeout ({settings.session_timeout_s:g}s)")
        self.layout = ZkLayout(settings.root)
        self.settings = settings
        self.dead_after_s = dead_after_s
        self.identifier = f"{socket.gethostname()}:{os.getpid()}"
        self._cond = threading.Condition()
        self._dirty = True
        self._seq = 0
        self._gone_since: dict[str, float] = {}
        self._dead_handled: set[str] = set()
        self._capacity: dict[str, Capacity] = {}
        self.lock: Any = None
        self._rolling = False
        self._waiting: Any = None
        """The lock a standby is waiting for (``cancel_wait`` ends the wait)."""
        self.conn = Connection(hosts, cred, settings.session_timeout_s, settings.reconnect_max_delay_s,
                               on_change=self._poke, default_acl=coordinator_only(cred.digest_id), patient=True)

    def connect(self, timeout_s: float = 15.0) -> None:
        self.conn.start_and_wait(timeout_s)

    def close(self) -> None:
        if self.lock is not None:
            try:
                self.lock.release()
            except Exception as exc:  # the session may be gone already; the lock went with it
                log.info("releasing the lock: %s", exc)
        self.conn.close()

    def _poke(self, *_: Any) -> None:
        with self._cond:
            self._dirty = True
            self._seq += 1
            self._cond.notify_all()

    # -- topologies ----------------------------------------------------------------------------

    def store_topologies(self, topologies: Mapping[str, Topology]) -> str:
        raw = dump_json({"format": FORMAT, "topologies": {k: v.model_dump(mode="json") for k, v in topologies.items()}})
        c, path = self.conn, self.layout.topologies
        try:
            try:
                stat = c.call(c.client.set_async, path, raw)
            except NoNodeError:
                c.call(c.client.create_async, path, raw)  # the client's default ACL: coordinator only
                stat = c.call(c.client.exists_async, path)
        except UNAVAILABLE as exc:
            raise ClusterError("zk", f"storing the topologies: {explain(exc, path)}") from exc
        return version_of(stat.mzxid)

    def read_topologies(self, watch: bool = False) -> tuple[dict[str, Topology], str | None]:
        c, path = self.conn, self.layout.topologies
        try:
            data, stat = c.call(c.client.get_async, path, watch=self._poke if watch else None)
        except NoNodeError:
            if watch:
                c.call(c.client.exists_async, path, watch=self._poke)
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
        while True:
            seen = self._mark()
            result = self.run_pass()
            if not result.placement.rolling or time.monotonic() >= deadline:
                return result
            self._watch_states(result.views)
            self._wait_change(seen, min(1.0, deadline - time.monotonic()))

    def _watch_states(self, names: Iterable[str]) -> None:
        for name in names:
            self.conn.client.exists_async(self.layout.state(name), watch=self._poke)

    def _inputs(self, views: Mapping[str, NodeView], drains: Mapping[str, str]) -> list[NodeInput]:
        """What placement is told of each node. A node without a document gets nothing (nobody could
        write its workers there); a drained one's workers no longer count, and go once stopping."""
        inputs = []
        t = time.monotonic()
        for name, v in views.items():
            if v.live is not None:  # what the node says it offers, within this coordinator's own limits
                self._capacity[name] = capped(v.live.capacity, self.settings)
                self._gone_since.pop(name, None)
                self._dead_handled.discard(name)
            else:
                self._gone_since.setdefault(name, t)
            dead = v.live is None and t - self._gone_since[name] >= self.dead_after_s
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
        c = self.conn
        topologies, topo_version = self.read_topologies()
        counters, state_version = self._read_schedule_state()
        drains, drain_version = read_drains(c, self.layout)
        views = read_cluster(c, self.layout)
        inputs = self._inputs(views, drains)
        placement = place(topologies, inputs, counters)
        txn = c.client.transaction()
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
            results = txn.commit_async().get(timeout=c.timeout_s)
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
        self._dead_handled.update(n.name for n in inputs if n.dead)
        return PassResult({k: v for k, v in versions.items() if v}, written, placement, views, topo_version)

    def _read_schedule_state(self) -> tuple[dict[str, int], int | None]:
        c = self.conn
        try:
            data, stat = c.call(c.client.get_async, self.layout.schedule_state)
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
        """Stay the active coordinator: a pass whenever nodes come or go, the topologies change,
        or a node that left passes ``dead_after_s``."""
        session = self.conn.state.session_id
        while not stop.is_set():
            conn = self.conn.state
            if not conn.connected:
                self._wait(stop, 1.0)
                continue
            if conn.session_id != session:
                log.warning("new ZooKeeper session: the lock went with the old one; waiting to be the active "
                            "coordinator again")
                self.lock = None
                if not self.wait_for_lock(stop):
                    return
                log.warning("active coordinator again")
                session, self._dirty = self.conn.state.session_id, True
            try:
                self._arm_watches()
                with self._cond:
                    dirty, self._dirty = self._dirty, False
                if dirty or self._someone_died():
                    result = self.run_pass()
                    was, self._rolling = self._rolling, bool(result.placement.rolling)
                    if self._rolling and not was:  # watch the nodes' reports first, then read them again
                        self._poke()
                    if result.written:
                        log.info("pass: wrote %s; unplaced %s; rolling %s", ", ".join(result.written),
                                 result.placement.unplaced or "none", result.placement.rolling or "none")
            except ClusterError as exc:
                log.error("%s", exc)
                self._wait(stop, 1.0)
            self._wait(stop, self._next_death())

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        with self._cond:
            if not self._dirty and not stop.is_set():
                self._cond.wait(timeout=max(0.0, seconds))

    def _arm_watches(self) -> None:
        c = self.conn
        names = c.call(c.client.get_children_async, self.layout.nodes, watch=self._poke)
        for name in names:
            c.client.exists_async(self.layout.live(name), watch=self._poke)
        if self._rolling:
            self._watch_states(names)
        self.read_topologies(watch=True)
        read_drains(c, self.layout, watch=self._poke)

    def _someone_died(self) -> bool:
        t = time.monotonic()
        return any(t - since >= self.dead_after_s and name not in self._dead_handled
                   for name, since in self._gone_since.items())

    def _next_death(self) -> float:
        t = time.monotonic()
        ahead = [since + self.dead_after_s - t for since in self._gone_since.values()
                 if since + self.dead_after_s > t]
        return min([30.0, *ahead])
