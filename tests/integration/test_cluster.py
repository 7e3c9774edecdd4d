"""Cluster mode against a real ZooKeeper ensemble and the real engine: agents as processes.

Placement over three agents, a dead node's workers moved and never duplicated once it returns,
session expiry under SIGSTOP, and hostile or missing documents that leave the node's workers be.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from typing import Any

import pytest

from berth._cluster.layout import assignment_acl, read_credential

from ._cluster import SESSION_S, Agent, Cluster, worker_topology
from .conftest import poll_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def everywhere(c: Cluster, shorts: str) -> dict[str, str]:
    """worker id -> node, over the engine's containers; fails if a worker runs on two nodes."""
    where: dict[str, str] = {}
    for s in shorts:
        for wid in c.running(s):
            assert wid not in where, f"{wid} runs on {where[wid]} and on {s}"
            where[wid] = s
    return where


def test_three_agents_two_topologies_then_a_dead_node_moves_without_duplicates(cluster: Cluster) -> None:
    c = cluster
    for s in "abc":
        c.add_node(s, memory_mb=400)
        c.start_agent(s)
    for s in "abc":
        c.until_znode(c.layout.live(c.node(s)), True, f"agent {s} to register")
    topologies = {"wc": worker_topology(4), "sess": worker_topology(2, user="berth-bob", memory_mb=64)}
    result = c.schedule(topologies)
    assert result.placement.unplaced == {}
    c.converge(result.versions)
    where = everywhere(c, "abc")
    assert Counter(c.topology_of(w) for w in where) == {"wc": 4, "sess": 2}
    assert set(where.values()) == {"a", "b", "c"}  # spread over every node
    assert {w.worker_id for v in c.views().values() for w in v.workers} == set(where)

    # node c's agent dies; its workers do not
    coordinator = c.coordinator(dead_after_s=SESSION_S)
    stop = threading.Event()

    def coordinate() -> None:
        coordinator.acquire(blocking=True)
        coordinator.follow(stop)

    follower = threading.Thread(target=coordinate, daemon=True)
    follower.start()
    old_c = c.running("c")
    assert old_c
    c.agents["c"].stop(signal.SIGKILL)
    c.until_znode(c.layout.live(c.node("c")), False, "c's registration to expire")
    assert c.running("c") == old_c, "a worker stopped because its agent died"

    # the coordinator moves them (new ids) once c has been gone past dead_after
    def c_document_empty() -> bool:
        return c.views()[c.node("c")].workers == []

    poll_until(c_document_empty, "c's workers to be moved off it", 120, every=0.2)
    views = c.views()
    c.converge({n: v.doc_version for n, v in views.items() if v.doc_version and n != c.node("c")}, coordinator)
    moved = {w.worker_id for n in ("a", "b") for w in views[c.node(n)].workers}
    assert not moved & set(old_c), "a moved worker kept its id"
    assert Counter(c.topology_of(w) for w in moved) == {"wc": 4, "sess": 2}

    # c comes back, reads its new (empty) document and stops the old copies: no duplicates remain
    c.start_agent("c")
    c.until_running("c", lambda r: not r, "c's old workers to stop")
    where = everywhere(c, "abc")
    assert set(where) == moved and "c" not in where.values()
    c.until_state("c", lambda st: st["applied_version"] == views[c.node("c")].doc_version and
                  all(w["state"] == "stopped" for w in st["workers"]), "c to apply its empty document")
    stop.set()
    coordinator.wake()
    follower.join(30)


def test_a_frozen_agent_loses_its_session_keeps_its_workers_and_reconverges(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a")
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"wc": worker_topology(2)}).versions)
    before = c.running("a")
    session = json.loads(c.admin.client.get(c.layout.state(a.name))[0])["session"]

    a.send(signal.SIGSTOP)
    c.until_znode(c.layout.live(a.name), False, "the frozen agent's session to expire")
    assert c.running("a") == before
    a.send(signal.SIGCONT)
    c.until_znode(c.layout.live(a.name), True, "the agent to register again")
    st = c.until_state("a", lambda st: st["session"] not in (None, session), "a report from the new session")
    assert st["session"] != session

    result = c.schedule({"wc": worker_topology(3)})
    c.converge(result.versions)
    after = c.running("a")
    assert len(after) == 3
    assert {w: after[w] for w in before} == before, "a worker was restarted"
    assert all(w["restarts"] == 0 for w in c.node_state("a")["workers"])
    assert c.agents["a"].status["session_expirations"] >= 1


HOSTILE = [
    (b"not json", "not valid JSON"),
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (b'{"format":1,"node":"NODE","workers":[],"workers":[{}]}', "duplicate key"),
    (b'{"format":1,"node":"someone-else","workers":[]}', "not this node"),
    (b'{"format":7,"node":"NODE","workers":[]}', "must be 1"),
    (b'{"format":1,"node":"NODE","workers":{"w":1}}', "must be a list"),
    (b'{"format":1,"node":"NODE","workers":[' + b'{},' * 600 + b'{}]}', "more than the 512"),
    (b'{"format":1,"node":"NODE","workers":[],"pad":"' + b"x" * 600_000 + b'"}', "more than the 524288"),
]


def test_hostile_and_missing_documents_leave_the_workers_running(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a", ports=tuple(range(6700, 6706)), memory_mb=500)
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"wc": worker_topology(2)}).versions)
    before = c.running("a")
    path = c.layout.assignment(a.name)
    good, _ = c.admin.client.get(path)

    for raw, reason in HOSTILE:
        stat = c.admin.client.set(path, raw.replace(b"NODE", a.name.encode()))
        version = f"{stat.mzxid:#x}"
        def judged(st: dict[str, Any], v: str = version) -> bool:
            return bool((st.get("document") or {}).get("version") == v)

        st = c.until_state("a", judged, f"the node to judge {reason}")
        assert st["document"]["status"] == "rejected" and reason in st["document"]["reason"], st["document"]
        assert c.running("a") == before

    # entries one by one: good ones apply, each bad one is rejected with its field, the rest stays
    doc = json.loads(good)
    keep = doc["workers"]
    bad = [{**keep[0], "worker_id": "evil-port", "port": 9999},
           {**keep[0], "worker_id": "evil-root", "port": 6702, "user": "root"},
           {**keep[0], "worker_id": "evil-env", "port": 6704, "env": {"BASH_ENV": "/tmp/x"}},
           {**keep[0], "worker_id": "evil-mem", "port": 6705, "memory_mb": 100_000},
           {**keep[0], "worker_id": "evil-image", "port": 6703, "image": "registry.example/x:1"},
           {"worker_id": "../../etc", "topology_id": "t", "port": 6704, "user": "berth-alice", "command": ["x"]}]
    stat = c.admin.client.set(path, json.dumps({**doc, "workers": keep + bad}).encode())
    version = f"{stat.mzxid:#x}"
    st = c.until_state("a", lambda st: st["applied_version"] == version, "the partly bad document to apply")
    assert st["document"]["status"] == "partly-applied"
    fields = {(r["worker_id"], r["field"]) for r in st["rejected"]}
    assert {("evil-port", "port"), ("evil-root", "user"), ("evil-mem", "memory_mb"),
            ("evil-image", "image")} <= fields, st["rejected"]
    assert any(r["field"] and r["field"].startswith("env") for r in st["rejected"]), st["rejected"]
    assert any(r["field"] == "worker_id" for r in st["rejected"]), st["rejected"]
    assert c.running("a") == before

    # a deleted document is not "run nothing"
    c.admin.client.delete(path)
    st = c.until_state("a", lambda st: (st.get("document") or {}).get("status") == "missing", "missing")
    assert c.running("a") == before
    node_digest = read_credential(str(a.auth)).digest_id
    c.admin.client.create(path, good, acl=assignment_acl(c.cred.digest_id, node_digest))
    stat = c.admin.client.exists(path)
    st = c.until_state("a", lambda st: st["applied_version"] == f"{stat.mzxid:#x}", "the document to return")
    assert c.running("a") == before
    assert all(w["restarts"] == 0 for w in st["workers"])


def test_a_second_agent_for_the_node_is_refused_and_a_removed_registration_comes_back(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a")
    c.start_agent("a")
    live = c.layout.live(a.name)
    c.until_znode(live, True, "the agent to register")

    # the same identity started again elsewhere (another state dir): it waits for the registration
    # and reads nothing (a node without workers: the engine holds no claim of the first one yet)
    (c.base / "a2").mkdir()
    second_cfg = a.config.with_name("second.toml")
    second_cfg.write_text(a.config.read_text().replace(str(a.state_dir), str(a.state_dir) + "2"))
    c.agents["a2"] = Agent(a.name, second_cfg, a.auth, a.state_dir.with_name("state2"))
    second = c.start_agent("a2")
    poll_until(lambda: "registered by pid" in (second.status.get("problem") or ""), "the second agent to wait",
               120, every=0.1)
    assert second.status["applied_version"] is None and not second.status["registered"]
    second.stop()

    c.converge(c.schedule({"wc": worker_topology(1)}).versions)
    before = c.running("a")
    # with workers running, the first supervisor's claim on the engine refuses a second one outright
    second = c.start_agent("a2")
    assert second.proc is not None and second.proc.wait(120) != 0
    assert "state" in c.log("a2").lower()
    assert c.running("a") == before

    # a registration removed under a live session is made again
    owner = c.admin.client.exists(live).ephemeralOwner
    c.admin.client.delete(live)
    c.until_znode(live, True, "the agent to register again")
    assert c.admin.client.exists(live).ephemeralOwner == owner
    assert c.running("a") == before
