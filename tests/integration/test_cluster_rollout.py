"""Changing a topology on a real cluster: "converged" means the new workers run, and workers are
replaced a few at a time (a rolling replacement), never all at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bench.cluster import most_down

from ._cluster import WAIT, Cluster, worker_topology

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.pause()\n"
"""A worker that ignores SIGTERM: each stop takes the whole grace period (1 s in these tests)."""


def stubborn(n: int, **kw: Any) -> dict[str, Any]:
    return {**worker_topology(n, **kw), "command": ["python3", "-c", STUBBORN]}


def test_converged_only_once_the_replacements_run(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a", parallel_stops=1)  # one stop or replacement at a time, each the whole grace period
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"slow": stubborn(1), "wc": stubborn(3)}).versions)
    old = {w: cid for w, cid in c.running("a").items() if c.topology_of(w) == "wc"}
    assert len(old) == 3
    c.converge(c.schedule({"wc": stubborn(3, env={"GENERATION": "2"})}).versions)
    now = c.running("a")
    assert not set(now.values()) & set(old.values()), "converged while old containers still ran"
    assert set(now) == set(old), "converged while a removed worker still ran"  # wc's updated in place


def test_a_changed_topology_is_replaced_one_worker_at_a_time(cluster: Cluster) -> None:
    c = cluster
    for s in "ab":
        c.add_node(s)
        c.start_agent(s)
        c.until_znode(c.layout.live(c.node(s)), True, f"agent {s} to register")
    c.converge(c.schedule({"wc": worker_topology(4)}).versions)
    old = {**c.running("a"), **c.running("b")}
    since = time.time()
    result = c.schedule({"wc": worker_topology(4, env={"GENERATION": "2"})})  # 25% of 4: one at a time
    c.converge(result.versions)
    until = time.time() + 1
    now = {**c.running("a"), **c.running("b")}
    assert set(now) == set(old) and not set(now.values()) & set(old.values())
    worst, started = most_down(c.docker, f"{c.prefix}-wc", since, until)
    assert started == len(old)
    assert worst == 1, f"{worst} workers of 4 were down at once"
    assert result.placement.rolling == {}

    # the same under an active coordinator (schedule --follow): a pass whenever a node reports
    coordinator = c.coordinator()
    stop = threading.Event()

    def coordinate() -> None:
        coordinator.acquire(blocking=True)
        coordinator.follow(stop)

    follower = threading.Thread(target=coordinate, daemon=True)
    follower.start()
    try:
        since = time.time()
        versions, unplaced = c.coordinator().wait_for_pass(
            c.store({"wc": worker_topology(4, env={"GENERATION": "3"}, max_unavailable=2)}), WAIT)
        assert unplaced == {}
        c.converge(versions)
        worst, started = most_down(c.docker, f"{c.prefix}-wc", since, time.time() + 1)
        assert started == len(old) and worst == 2
    finally:
        stop.set()
        coordinator.wake()
        follower.join(30)
