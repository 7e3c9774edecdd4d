"""``berth cluster remove-node``: take a node out of the cluster without losing or orphaning a
worker.

A node that is not live is removed at once (its document's workers are placed elsewhere by the
next pass). A live one is refused unless drained: its agent would keep running its workers with
nobody to account for them. ``--drain`` first checks that it can finish (every znode can be
deleted, the other nodes have room for every worker), then marks the node ``moving`` (passes place
replacements elsewhere while its workers run on), waits until the replacements run, marks it
``stopping`` (its document is emptied, its agent stops its own), waits until its agent reports
none left, and then removes everything in one transaction. A drain that cannot finish in time is
undone: the marker goes, and the next pass drops the replacements again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping

from .._exceptions import ClusterError
from .admin import NodeView, read_cluster, removal_paths, remove_node
from .drains import MOVING, STOPPING, read_drains, set_drain
from .scheduler import Coordinator


def remove(coordinator: Coordinator, node: str, drain: bool, timeout_s: float, say: Callable[[str], None]) -> None:
    views = read_cluster(coordinator.conn, coordinator.layout)
    v = views.get(node)
    if v is None:
        raise ClusterError("node", f"{node!r} is not enrolled")
    removal_paths(coordinator.conn, coordinator.layout, node)  # all can be deleted: else the reason, nothing changed
    if v.live is not None and not drain:
        raise ClusterError("node", f"{node} is live (agent pid {v.live.pid} on {v.live.host}): removed, it would "
                                   f"run its {len(v.workers)} worker(s) on with nobody to account for them; "
                                   "--drain moves them to other nodes first (or stop its agent)")
    if v.live is not None:
        _drain(coordinator, node, v, time.monotonic() + timeout_s, timeout_s, say)
    remove_node(coordinator.conn, coordinator.layout, node)
    if node in read_drains(coordinator.conn, coordinator.layout)[0]:
        set_drain(coordinator.conn, coordinator.layout, node, None)
    if v.live is None and v.workers:
        say(f"{len(v.workers)} worker(s) of {node}'s document go to other nodes with the next pass")


def _drain(coordinator: Coordinator, node: str, v: NodeView, deadline: float, timeout_s: float,
           say: Callable[[str], None]) -> None:
    drains, _ = read_drains(coordinator.conn, coordinator.layout)
    before = coordinator.plan(drains).unplaced
    after = coordinator.plan({**drains, node: MOVING}).unplaced
    short = {tid: n - before.get(tid, 0) for tid, n in after.items() if n > before.get(tid, 0)}
    if short:
        what = ", ".join(f"{n} of {tid}" for tid, n in sorted(short.items()))
        raise ClusterError("node", f"the other nodes have no room for {node}'s workers ({what}); nothing changed")
    try:
        say(f"draining {node}: placing replacements for its {len(v.workers)} worker(s) on other nodes")
        placed = read_cluster(coordinator.conn, coordinator.layout)
        ids = {n: {w.worker_id for w in x.workers} for n, x in placed.items()}
        versions = _passed(coordinator, set_drain(coordinator.conn, coordinator.layout, node, MOVING), deadline)
        views = read_cluster(coordinator.conn, coordinator.layout)
        fresh = {n: {w.worker_id for w in x.workers} - ids.get(n, set()) for n, x in views.items() if n != node}
        _until_running(coordinator, {n: w for n, w in fresh.items() if w}, deadline, timeout_s)
        say(f"the replacements run; stopping {node}'s own workers")
        versions = _passed(coordinator, set_drain(coordinator.conn, coordinator.layout, node, STOPPING), deadline)
        if node not in versions:
            raise ClusterError("node", f"{node} was removed meanwhile (by another remove-node?)")
        conv = coordinator.converge({node: versions[node]}, max(0.0, deadline - time.monotonic()))
        if not conv.done:
            raise ClusterError("node", f"{node} did not stop its workers within {timeout_s:g}s: {conv.nodes[node]}")
    except BaseException:
        with contextlib.suppress(ClusterError):
            set_drain(coordinator.conn, coordinator.layout, node, None)
        say(f"the drain of {node} was undone: it stays enrolled")
        raise


def _passed(coordinator: Coordinator, version: str, deadline: float) -> dict[str, str]:
    """A pass that sees the drain marker at ``version``: this command's own if no coordinator is
    active, else the active one's. Every node's document version after it."""
    if coordinator.acquire(blocking=False):
        try:
            return coordinator.run_pass().versions
        finally:
            coordinator.lock.release()
            coordinator.lock = None
    versions, _ = coordinator.wait_for_pass(version, max(0.0, deadline - time.monotonic()), key="drain_version")
    return versions


def _until_running(coordinator: Coordinator, ids: Mapping[str, set[str]], deadline: float, timeout_s: float) -> None:
    """Until every worker of ``ids`` runs (its node, live, reports it running from its document's spec)."""
    try:
        _until_reported(coordinator, ids, deadline, timeout_s)
    finally:
        coordinator.unwatch_reports()


def _until_reported(coordinator: Coordinator, ids: Mapping[str, set[str]], deadline: float, timeout_s: float) -> None:
    while True:
        seen = coordinator.wakeup.mark()
        views = read_cluster(coordinator.conn, coordinator.layout)
        missing = {n: sorted(w - views[n].ready()) for n, w in ids.items() if n in views and w - views[n].ready()}
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise ClusterError("node", f"the replacements did not all run within {timeout_s:g}s: {missing}")
        coordinator.watch_reports(missing)
        coordinator.wakeup.wait(seen, min(1.0, deadline - time.monotonic()))
