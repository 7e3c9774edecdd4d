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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import BadVersionError, CancelledError, KazooException, LockTimeout, NodeExistsError, NoNodeError

from .._core.clusterconfig import ClusterSection
from .._core.spec import WorkerSpec
from .._exceptions import ClusterError
from .admin import NodeView, read_cluster
from .capacity import Capacity
from .documents import (
    FORMAT,
    dump_json,
    encode_assignment,
    load_json,
    now,
    version_number,
    version_of,
)
from .layout import Credential, ZkLayout, coordinator_only
from .placement import NodeInput, Placement, Topology, parse_topologies, place
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


@dataclass
class Convergence:
    done: bool
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _dump(spec: WorkerSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {"worker_id": spec.worker_id}


class Coordinator:
    def __init__(self, hosts: str, cred: Credential, settings: ClusterSection, dead_after_s: float) -> None:
        if dead_after_s < settings.session_timeout_s:
            raise ClusterError("dead_after", f"must be at least the session timeout ({settings.session_timeout_s:g}s)")
        self.layout = ZkLayout(settings.root)
        self.dead_after_s = dead_after_s
        self.identifier = f"{socket.gethostname()}:{os.getpid()}"
        self._cond = threading.Condition()
        self._dirty = True
        self._seq = 0
        self._gone_since: dict[str, float] = {}
        self._dead_handled: set[str] = set()
        self._capacity: dict[str, Capacity] = {}
        self.lock: Any = None
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

    def _mark(self) -> int:
        with self._cond:
            return self._seq

    def _wait_change(self, seen: int, seconds: float) -> None:
        """For the waiting commands: wake on any watch, without taking the follower's work away."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seen, timeout=max(0.0, seconds))

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

    def _try_pass(self) -> PassResult | None:
        c = self.conn
        topologies, topo_version = self.read_topologies()
        counters, state_version = self._read_schedule_state()
        views = read_cluster(c, self.layout)
        inputs = []
        t = time.monotonic()
        for name, v in views.items():
            if v.live is not None:
                self._capacity[name] = v.live.capacity
                self._gone_since.pop(name, None)
                self._dead_handled.discard(name)
            else:
                self._gone_since.setdefault(name, t)
            dead = v.live is None and t - self._gone_since[name] >= self.dead_after_s
            inputs.append(NodeInput(name, self._capacity.get(name), v.live is not None, dead, v.workers))
        placement = place(topologies, inputs, counters)
        txn = c.client.transaction()
        if self.lock is not None and self.lock.node:
            txn.check(f"{self.layout.lock}/{self.lock.node}", 0)  # fencing: only while we hold the lock
        written = []
        for name, specs in placement.docs.items():
            v = views[name]
            if [_dump(s) for s in specs] == [_dump(s) for s in v.workers] and not v.problems:
                continue
            if v.doc_stat_version is None:
                continue  # no document znode: the node is half-enrolled; add-node makes it
            txn.set_data(self.layout.assignment(name), encode_assignment(name, [_dump(s) for s in specs]),
                         version=v.doc_stat_version)
            written.append(name)
        body = dump_json({"format": FORMAT, "counters": placement.counters, "coordinator": self.identifier,
                          "topologies_version": topo_version, "pass_at": now(),
                          "unplaced": placement.unplaced, "stranded": placement.stranded})
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

    def schedule_state(self) -> dict[str, Any]:
        c = self.conn
        try:
            data, _ = c.call(c.client.get_async, self.layout.schedule_state)
        except NoNodeError:
            return {}
        doc = load_json(data, "schedule state")
        return doc if isinstance(doc, dict) else {}

    def wait_for_pass(self, topologies_version: str | None, timeout_s: float) -> tuple[dict[str, str], dict[str, int]]:
        """Wait for the active coordinator's pass over these topologies (its state names their version);
        return every node's document version and what it could not place."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self._mark()
            st = self.schedule_state()
            if version_number(st.get("topologies_version")) >= version_number(topologies_version):
                views = read_cluster(self.conn, self.layout)
                return {n: v.doc_version for n, v in views.items() if v.doc_version}, dict(st.get("unplaced") or {})
            if time.monotonic() >= deadline:
                raise ClusterError("schedule", f"the active coordinator did not place the topologies in {timeout_s:g}s")
            self.conn.client.exists_async(self.layout.schedule_state, watch=self._poke)
            self._wait_change(seen, min(1.0, deadline - time.monotonic()))

    # -- convergence ---------------------------------------------------------------------------

    def converge(self, versions: Mapping[str, str], timeout_s: float, running: bool = True) -> Convergence:
        """Wait (on watches of the nodes' state znodes) until every live node applied its version."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self._mark()
            try:
                views = read_cluster(self.conn, self.layout)
            except ClusterError as exc:  # ZooKeeper away for a moment: the deadline still holds
                if time.monotonic() >= deadline:
                    raise
                log.info("waiting for convergence: %s", exc)
                self.conn._up.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            report, done = {}, True
            for name, want in sorted(versions.items()):
                v = views.get(name)
                if v is None or v.live is None:
                    report[name] = {"live": False, "want": want}
                    continue
                st = v.state
                applied = st.supervisor_version if st else None  # once its workers run from it
                rejected = st is not None and st.document is not None and st.document.version == want and \
                    st.document.status == "rejected"
                rejections = [f"{r.get('worker_id') or '-'}: {r.get('field') or '-'}: {r.get('reason')}"
                              for r in (st.rejected if st else [])]
                applied_ok = version_number(applied) >= version_number(want)
                ids = {r.split(":")[0] for r in rejections}
                runnable = sum(1 for w in v.workers if w.worker_id not in ids)
                ok = applied_ok and (not running or v.running() >= runnable)
                report[name] = {"live": True, "want": want, "applied": applied, "workers": len(v.workers),
                                "running": v.running(), "rejected": st.document.reason if rejected and st and
                                st.document else None, "rejections": rejections if applied_ok else []}
                done = done and (ok or rejected)
                self.conn.client.exists_async(self.layout.state(name), watch=self._poke)
            if done or time.monotonic() >= deadline:
                return Convergence(done, report)
            self._wait_change(seen, min(1.0, deadline - time.monotonic()))

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
                log.info("waiting for the coordinator lock: %s", explain(exc, self.layout.lock))
                self._wait(stop, 1.0)
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
                    log.info("pass: wrote %s; unplaced %s", ", ".join(result.written) or "nothing",
                             result.placement.unplaced or "none")
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
        self.read_topologies(watch=True)

    def _someone_died(self) -> bool:
        t = time.monotonic()
        return any(t - since >= self.dead_after_s and name not in self._dead_handled
                   for name, since in self._gone_since.items())

    def _next_death(self) -> float:
        t = time.monotonic()
        ahead = [since + self.dead_after_s - t for since in self._gone_since.values()
                 if since + self.dead_after_s > t]
        return min([30.0, *ahead])
