"""ZooKeeper failures on a private ensemble: the leader killed, the quorum lost for 10 s, the
whole ensemble down while an agent restarts, and opt-in fencing. No worker may stop (except
under fencing, which is what fencing is for), and what is written afterwards is applied."""

from __future__ import annotations

import io
import threading
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
from rich.console import Console

from ._cluster import PRIVATE_ZK, Cluster, Ensemble, worker_topology
from .conftest import ROOT, SOCKET, make_config, poll_until


def purge_count(node: str) -> int:
    client = docker.APIClient(base_url=SOCKET, version="auto")
    return len(client.containers(all=True, filters={"label": f"berth.node={node}"}))

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

QUORUM_LOSS_S = 10.0


def connected(c: Cluster, short: str) -> bool:
    st = c.agents[short].status
    return st.get("zookeeper") == "connected" and bool(st.get("registered"))


def test_leader_killed_then_quorum_lost_for_ten_seconds(private_cluster: Cluster) -> None:
    c, ens = private_cluster, private_cluster.ensemble
    for s in "ab":
        c.add_node(s)
        c.start_agent(s)
        c.until_znode(c.layout.live(c.node(s)), True, f"agent {s} to register")
    c.converge(c.schedule({"wc": worker_topology(4)}).versions)
    before = {s: c.running(s) for s in "ab"}
    assert sum(len(v) for v in before.values()) == 4

    leader = ens.leader()
    assert leader is not None
    ens.must("kill", str(leader))
    poll_until(lambda: ens.leader() not in (None, leader), "a new leader", 120, every=0.2)
    result = c.schedule({"wc": worker_topology(5)})
    c.converge(result.versions)
    ens.must("start-server", str(leader))
    for s in "ab":
        assert {w: c.running(s)[w] for w in before[s]} == before[s], "a worker stopped when the leader died"

    # two of three servers away: no quorum, no session can be kept or expired
    lead = ens.leader() or 1
    others = [lead, next(n for n in (1, 2, 3) if n != lead)]
    for n in others:
        ens.must("stop-server", str(n))
    poll_until(lambda: not connected(c, "a") and not connected(c, "b"), "the agents to notice", 120, every=0.2)
    running = {s: c.running(s) for s in "ab"}
    threading.Event().wait(QUORUM_LOSS_S)  # the fault lasts this long; nothing is waited for here
    for s in "ab":
        assert c.running(s) == running[s], "a worker stopped while the quorum was lost"
        assert c.agents[s].status["status"] == "degraded"
    for n in others:
        ens.must("start-server", str(n))
    poll_until(lambda: connected(c, "a") and connected(c, "b"), "the agents to reconnect", 120, every=0.2)

    result = c.schedule({"wc": worker_topology(6)})
    c.converge(result.versions)
    for s in "ab":
        now = c.running(s)
        assert {w: now[w] for w in running[s]} == running[s], "a worker was restarted"
    assert sum(len(c.running(s)) for s in "ab") == 6


def test_an_agent_restarted_without_zookeeper_runs_from_its_cache_and_fencing_is_opt_in(
        private_cluster: Cluster) -> None:
    c, ens = private_cluster, private_cluster.ensemble
    a = c.add_node("a")
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"wc": worker_topology(2)}).versions)
    before = c.running("a")

    a.stop()  # SIGTERM: the agent goes, its workers stay
    assert c.running("a") == before
    ens.must("stop")
    try:
        c.start_agent("a")
        poll_until(lambda: (a.status.get("document") or {}).get("status") == "cached", "a start from the cache",
                   120, every=0.1)
        poll_until(lambda: bool(a.status.get("supervising")), "the agent to supervise", 120, every=0.1)
        assert c.running("a") == before, "the workers were not adopted as they were"
        assert a.status["status"] == "degraded"
        a.stop()
        # fencing, asked for: after 3 s without ZooKeeper this agent stops its workers
        c.start_agent("a", "--fence-after", "3")
        c.until_running("a", lambda r: not r, "fencing to stop the workers")
        poll_until(lambda: bool(a.status.get("fenced")), "the agent to report itself fenced", 120, every=0.1)
    finally:
        ens.must("start")
    poll_until(lambda: connected(c, "a"), "the agent to reconnect", 120, every=0.2)
    after = c.until_running("a", lambda r: len(r) == 2, "the workers to start again after fencing")
    assert set(after) == set(before)
    assert not a.status["fenced"]


def test_the_cluster_demo_runs_and_cleans_up(private_zookeeper: Ensemble, engine: str, users: Any,
                                             base: Path) -> None:
    from berth._cli.cluster_demo import ZkControl, run_cluster_demo

    prefix = "d" + uuid.uuid4().hex[:6] + "-n"
    out = io.StringIO()
    zk = ZkControl(str(ROOT / "scripts/zookeeper"), PRIVATE_ZK)
    code = run_cluster_demo(make_config(base, "unused"), private_zookeeper.hosts, zk,
                            Console(file=out, width=200), workdir=base / "demo", root="/" + prefix[:-2], prefix=prefix,
                            topology_prefix=prefix)
    text = out.getvalue()
    assert code == 0, text
    assert "every worker on exactly one node: yes" in text
    assert "duplicates: none" in text and "no worker stopped: yes" in text
    assert not any(purge_count(prefix + str(i)) for i in (1, 2, 3))
