"""Routine operator actions on a cluster (issue 19), against the real ensemble and engine: none
may lose, duplicate or hide a worker.

An agent's API refuses to override ZooKeeper; one coordinator pass sees every port it frees; a
node that comes back keeps the workers nobody could replace.
"""

from __future__ import annotations

import signal
import subprocess
import threading

import httpx
import pytest

from berth._cluster.quota import quota_dir

from ._cluster import Cluster, worker_topology
from .conftest import poll_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def api(sock: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://berth", timeout=30)


def test_an_agent_refuses_a_put_of_its_assignments(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a")
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"wc": worker_topology(2)}).versions)
    before = c.running("a")
    sock = a.state_dir / "api.sock"
    poll_until(sock.exists, "the agent's API socket", 60)
    with api(str(sock)) as h:
        put = h.put("/assignments", json={"workers": []})
        assert put.status_code == 409, put.text
        assert c.layout.assignment(a.name) in put.json()["detail"][0]["msg"]
        assert len(h.get("/assignments").json()["workers"]) == 2
    assert c.running("a") == before


def test_one_pass_sees_every_port_it_frees(cluster: Cluster) -> None:
    """A topology that grows is placed with the ports one that shrinks gives back in the same
    pass, whatever the order of their names."""
    c = cluster
    c.add_node("a", ports=(6700, 6701, 6702))
    c.start_agent("a")
    c.until_znode(c.layout.live(c.node("a")), True, "the agent to register")
    c.converge(c.schedule({"zz": worker_topology(3)}).versions)
    result = c.schedule({"aa": worker_topology(2), "zz": worker_topology(1)})
    assert result.placement.unplaced == {}
    nodes = c.converge(result.versions)
    assert nodes[c.node("a")]["running"] == 3
    assert sorted(c.topology_of(w) for w in c.running("a")) == ["aa", "aa", "zz"]


def test_a_returning_node_keeps_the_workers_nobody_could_replace(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a")
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"wc": worker_topology(3)}).versions)
    before = c.running("a")
    coordinator = c.coordinator(dead_after_s=4.0)
    stop = threading.Event()

    def coordinate() -> None:
        coordinator.acquire(blocking=True)
        coordinator.follow(stop)

    follower = threading.Thread(target=coordinate, daemon=True)
    follower.start()
    try:
        a.stop(signal.SIGKILL)
        c.until_znode(c.layout.live(a.name), False, "a's registration to expire")
        # no other node: nothing can be moved; the pass after dead_after says so and keeps them
        poll_until(lambda: a.name in coordinator.liveness.handled, "a pass past dead_after", 120, every=0.2)
        assert sorted(w.worker_id for w in c.views()[a.name].workers) == sorted(before)
        assert coordinator.schedule_state()["stranded"] == {f"{c.prefix}-wc": 3}
        c.start_agent("a")
        c.until_znode(c.layout.live(a.name), True, "the agent to register again")
        st = c.until_state("a", lambda st: st["applied_version"] is not None and st["session"] is not None
                           and len([w for w in st["workers"] if w["state"] == "running"]) == 3,
                           "a to run its document again")
        assert c.running("a") == before, "a worker nobody replaced was stopped or restarted"
        assert all(w["restarts"] == 0 for w in st["workers"])
    finally:
        stop.set()
        coordinator.wake()
        follower.join(30)


def active(c: Cluster, tag: str) -> bool:
    return any(line.startswith("active coordinator") for line in c.output(tag).splitlines())


def test_a_standby_coordinator_takes_over_and_moves_a_dead_nodes_workers(cluster: Cluster) -> None:
    c = cluster
    for s in "ab":
        c.add_node(s)
        c.start_agent(s)
        c.until_znode(c.layout.live(c.node(s)), True, f"agent {s} to register")
    first = c.start_coordinator("co1", "--dead-after", "4")
    poll_until(lambda: active(c, "co1"), "the first coordinator to be active", 60, every=0.1)
    second = c.start_coordinator("co2", "--dead-after", "4")
    poll_until(lambda: "waiting for the active coordinator" in c.output("co2"), "the standby to wait", 60, every=0.1)
    coordinator = c.coordinator()
    versions, unplaced = coordinator.wait_for_pass(c.store({"wc": worker_topology(4)}, coordinator), 60)
    assert unplaced == {}
    c.converge(versions)
    assert second.poll() is None, c.output("co2")

    first.kill()  # SIGKILL: its lock goes with its session
    poll_until(lambda: second.poll() is not None or active(c, "co2"), "the standby to take over", 60, every=0.1)
    assert second.poll() is None, c.output("co2")
    old_b = c.running("b")
    assert old_b
    c.agents["b"].stop(signal.SIGKILL)

    def moved() -> bool:
        views = c.views()
        return not views[c.node("b")].workers and len(views[c.node("a")].workers) == 4
    poll_until(moved, "b's workers to be moved to a", 120, every=0.2)
    running = c.until_running("a", lambda r: len(r) == 4, "4 workers running on a")
    assert not set(running) & set(old_b)
    assert second.poll() is None, c.output("co2")

    # a standby told to stop while it waits leaves at once, without a traceback
    third = c.start_coordinator("co3", "--dead-after", "4")
    poll_until(lambda: "waiting for the active coordinator" in c.output("co3"), "a standby to wait", 60, every=0.1)
    third.send_signal(signal.SIGTERM)
    assert third.wait(30) == 0, c.output("co3")
    assert "Traceback" not in c.output("co3") + c.output("co2")


def remove_node(c: Cluster, short: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(c.berth("cluster", "remove-node", c.node(short), *args), capture_output=True, text=True,
                          timeout=300)


def test_remove_node_refuses_a_live_node_and_changes_nothing(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a")
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"wc": worker_topology(2)}).versions)
    before, views = c.running("a"), c.views()
    done = remove_node(c, "a")
    assert done.returncode == 125, done.stdout + done.stderr
    assert done.stderr.startswith(f"error: node: {a.name} is live") and "--drain" in done.stderr, done.stderr
    after = c.views()
    assert after[a.name].live is not None and after[a.name].doc_version == views[a.name].doc_version
    assert c.admin.client.exists(quota_dir(c.layout.node(a.name))) is not None
    assert c.running("a") == before
    # drained, its workers would have nowhere to go: refused before anything changes
    done = remove_node(c, "a", "--drain")
    assert done.returncode == 125 and "no room" in done.stderr, done.stdout + done.stderr
    assert c.admin.client.exists(c.layout.drains) is None
    assert c.views()[a.name].doc_version == views[a.name].doc_version and c.running("a") == before


def test_remove_node_drain_moves_the_workers_then_removes_the_node(cluster: Cluster) -> None:
    c = cluster
    for s in "ab":
        c.add_node(s)
        c.start_agent(s)
        c.until_znode(c.layout.live(c.node(s)), True, f"agent {s} to register")
    c.converge(c.schedule({"wc": worker_topology(4)}).versions)
    old_a, old_b = c.running("a"), c.running("b")
    assert len(old_a) == 2 and len(old_b) == 2
    done = remove_node(c, "a", "--drain")
    assert done.returncode == 0, done.stdout + done.stderr
    running_b = c.running("b")
    assert len(running_b) == 4 and set(old_b) <= set(running_b), "b's own workers were not kept"
    assert not c.running("a"), "a's workers were left running"
    for path in (c.layout.node(c.node("a")), c.layout.assignment(c.node("a")), quota_dir(c.layout.node(c.node("a")))):
        assert c.admin.client.exists(path) is None, path
    poll_until(lambda: "not enrolled" in (c.agents["a"].status.get("problem") or ""), "a's agent to say so", 60)
    # from now on nothing is placed on a, although its agent still runs
    result = c.schedule({"wc": worker_topology(5)})
    assert set(result.placement.docs) == {c.node("b")} and len(result.placement.docs[c.node("b")]) == 5


def test_no_worker_is_counted_as_placed_on_a_node_without_a_document(cluster: Cluster) -> None:
    c = cluster
    for s in "ab":
        c.add_node(s, ports=(6700, 6701))
        c.start_agent(s)
        c.until_znode(c.layout.live(c.node(s)), True, f"agent {s} to register")
    c.admin.client.delete(c.layout.assignment(c.node("b")))  # half-enrolled: nobody can write its document
    result = c.schedule({"wc": worker_topology(3)})
    assert [w.port for w in result.placement.docs[c.node("a")]] == [6700, 6701]
    assert not result.placement.docs[c.node("b")]
    assert result.placement.unplaced == {f"{c.prefix}-wc": 1}


def test_cluster_ps_shows_what_the_engines_run_orphans_included(cluster: Cluster) -> None:
    import json

    from berth import Node, WorkerSpec
    from berth._storm.loading import load_config

    c = cluster
    a = c.add_node("a")
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"wc": worker_topology(2)}).versions)
    # a container of this node's name that no document names: another berth's, on the same engine
    cfg = load_config(a.config)
    other = cfg.model_copy(update={"node": cfg.node.model_copy(update={
        "state_dir": str(c.base / "other" / "state"), "local_dir": str(c.base / "other" / "local")})})
    stray = Node(other)
    try:
        stray.launch(WorkerSpec(worker_id=f"{c.prefix}-stray-1", topology_id=f"{c.prefix}-stray", port=6709,
                                user="berth-alice", command=("python3", "-c", "import signal; signal.pause()")))
    finally:
        stray.close()
    c.until_state("a", lambda st: any(e["worker_id"] == f"{c.prefix}-stray-1" for e in st.get("engine") or []),
                  "a to report the stray container")
    done = subprocess.run(c.berth("cluster", "ps", "--json"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {r["worker_id"]: r for r in json.loads(done.stdout)["workers"]}
    stray_row = rows[f"{c.prefix}-stray-1"]
    assert stray_row["node"] == a.name and stray_row["engine"] == "running" and stray_row["state"] is None
    assert "no document names it" in stray_row["note"] and "another supervisor" in stray_row["note"]
    assert all(rows[w]["engine"] == "running" and rows[w]["note"] is None for w in c.running("a") if "wc" in w)
    table = subprocess.run(c.berth("cluster", "ps"), capture_output=True, text=True, timeout=120)
    assert "ORPHAN" in table.stdout and f"{c.prefix}-stray-1" in table.stdout, table.stdout


def test_a_nodes_unreadable_report_does_not_make_the_coordinator_rewrite_its_document(cluster: Cluster) -> None:
    """Rewritten on every pass, a document would be read and applied again and again (and, while a
    rolling replacement watches the reports, for ever)."""
    c = cluster
    a = c.add_node("a")
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    co = c.coordinator()
    c.converge(c.schedule({"wc": worker_topology(1)}, co=co).versions)
    c.admin.client.set(c.layout.state(a.name), b'{"format": 1, "node": "someone-else"}')
    assert c.views()[a.name].problems
    result = c.schedule({"wc": worker_topology(1)}, co=co)
    assert result.written == []
