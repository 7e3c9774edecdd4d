"""Cluster documents and identities as untrusted input: each refusal names its field and reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from berth._cluster.cache import DocumentCache
from berth._cluster.capacity import Capacity, check_capacity
from berth._cluster.documents import (
    MAX_DOCUMENT_BYTES,
    MAX_WORKERS_PER_NODE,
    NodeState,
    Registration,
    decode_assignment,
    decode_registration,
    decode_state,
    encode_assignment,
    encode_registration,
    encode_state,
)
from berth._cluster.layout import Credential, read_credential, write_credential
from berth._core.config import ContainerSection
from berth._exceptions import ClusterError
from berth._service.assignments import parse_document


def doc(**kw: object) -> bytes:
    return json.dumps({"format": 1, "node": "n1", "workers": [], **kw}).encode()


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (b"{", "document", "is not valid JSON"),
    (b"\xff", "document", "is not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "document", "is nested too deeply"),
    (b'{"format":1,"node":"n1","workers":[],"workers":[]}', "document", "duplicate key 'workers'"),
    (b'{"format":1,"node":"n1","workers":[' + b"1" * 5000 + b"]}", "document", "is not valid JSON"),
    (b"[]", "document", "must be a JSON object"),
    (doc(format=2), "document.format", "must be 1"),
    (doc(node="n2"), "document.node", "not this node"),
    (doc(workers={"a": 1}), "document.workers", "must be a list"),
    (doc(workers=[{}] * (MAX_WORKERS_PER_NODE + 1)), "document.workers", "more than the 512"),
    (doc(extra=1), "document.extra", "unknown key"),
    (doc(generation=5), "document.generation", "must be a string"),
    (b" " * (MAX_DOCUMENT_BYTES + 1), "document", "more than the 524288 allowed"),
])
def test_a_bad_assignment_document_is_refused_whole(raw: bytes, field: str, reason: str) -> None:
    with pytest.raises(ClusterError) as e:
        decode_assignment(raw, "n1")
    assert e.value.field == field and reason in e.value.reason


def test_assignment_round_trip_and_entries_left_for_the_supervisor() -> None:
    raw = encode_assignment("n1", [{"worker_id": "w1"}], generation="g")
    d = decode_assignment(raw, "n1")
    assert (d.node, list(d.workers), d.generation) == ("n1", [{"worker_id": "w1"}], "g")
    with pytest.raises(ClusterError, match="would be"):
        encode_assignment("n1", [{"x": "y" * MAX_DOCUMENT_BYTES}])


def registration(**kw: object) -> Registration:
    base: dict[str, object] = {"node": "n1", "berth_version": "0.1", "host": "h", "pid": 10, "pid_start": 5,
                               "boot_id": "b", "started_at": 1.0,
                               "capacity": Capacity(cpu_percent=200, memory_mb=100, ports=(1, 2))}
    return Registration.model_validate({**base, **kw})


def test_registration_round_trip_and_bounds() -> None:
    reg = registration()
    assert decode_registration(encode_registration(reg), "n1") == reg
    with pytest.raises(ClusterError, match="names 'n1'"):
        decode_registration(encode_registration(reg), "n2")
    body = json.loads(encode_registration(reg))
    body["capacity"]["ports"] = list(range(1, 2000))
    with pytest.raises(ClusterError) as e:
        decode_registration(json.dumps(body).encode(), "n1")
    assert e.value.field == "registration.capacity.ports"
    body["capacity"]["ports"] = [1, 1]
    with pytest.raises(ClusterError, match="distinct"):
        decode_registration(json.dumps(body).encode(), "n1")


def test_state_reports_are_bounded() -> None:
    st = NodeState(node="n1", updated_at=1.0, rejected=[{"reason": "x" * 5000}] * 150)
    body = json.loads(encode_state(st))
    assert len(body["rejected"]) == 101 and body["rejected"][-1] == {"reason": "and 50 more"}
    assert len(body["rejected"][0]["reason"]) == 1025
    assert decode_state(encode_state(st), "n1").node == "n1"
    with pytest.raises(ClusterError, match="names 'n1', not 'n2'"):
        decode_state(encode_state(st), "n2")


def test_the_node_rejects_entries_past_its_capacity_in_document_order() -> None:
    workers = [{"worker_id": f"w{i}", "topology_id": "t1", "port": 6700 + i, "user": "alice", "command": ["x"],
                "memory_mb": 400, "cpu_percent": 50} for i in range(4)]
    workers[1]["port"] = 9999
    parsed = parse_document({"workers": workers}, "zk")
    capacity = Capacity(cpu_percent=400, memory_mb=1000, ports=(6700, 6701, 6702, 6703, 9998))
    out = check_capacity(parsed, capacity, ContainerSection(), "zk")
    assert sorted(parsed.specs) == ["w0", "w2"]
    assert [(r.worker_id, r.field) for r in out] == [("w1", "port"), ("w3", "memory_mb")]
    assert "exceed the node's 1000 MiB (800 MiB assigned before it)" in out[1].reason


def test_credentials_must_be_owner_only_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "node.auth"
    write_credential(str(path), Credential("node-a", "p" * 20))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_credential(str(path)).user == "node-a"
    with pytest.raises(ClusterError, match="exists already"):
        write_credential(str(path), Credential("node-a", "q" * 20))
    os.chmod(path, 0o640)
    with pytest.raises(ClusterError, match="readable by others"):
        read_credential(str(path))
    for text, reason in [("nocolon" * 3, "one line user:password"), ("a:short", "at least 16"),
                         ("bad user:" + "p" * 20, "one line"), ("x" * 2000, "larger than 1024")]:
        bad = tmp_path / f"bad{len(text)}"
        bad.write_text(text)
        bad.chmod(0o600)
        with pytest.raises(ClusterError, match=reason):
            read_credential(str(bad))
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(ClusterError, match="cannot open"):
        read_credential(str(link))
    assert "p" * 20 not in repr(Credential("node-a", "p" * 20))


def test_the_document_cache_survives_and_refuses_damage(tmp_path: Path) -> None:
    cache = DocumentCache(tmp_path)
    assert cache.load("n1") is None
    cache.save(b'{"x":1}', "0x10", "n1")
    got = cache.load("n1")
    assert got is not None and (got.raw, got.version) == (b'{"x":1}', "0x10")
    with pytest.raises(ClusterError, match="node 'n1'"):
        cache.load("n2")
    cache.path.write_text('{"node":"n1","version":"0x1","document":"***"}')
    with pytest.raises(ClusterError, match="damaged"):
        cache.load("n1")


@pytest.mark.parametrize(("value", "ok"), [(30, True), (4.5, True), (0, False), (True, False), ("30", False),
                                           (10**9, False)])
def test_a_documents_dead_after_is_a_bounded_number_of_seconds(value: object, ok: bool) -> None:
    if ok:
        assert decode_assignment(doc(dead_after_s=value), "n1").dead_after_s == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ClusterError) as e:
            decode_assignment(doc(dead_after_s=value), "n1")
        assert e.value.field == "document.dead_after_s"


def test_cluster_ps_rows_show_the_engines_view_and_mark_the_differences() -> None:
    from berth._cli.cluster_views import cluster_rows
    from berth._cluster.admin import NodeView
    from berth._core.spec import WorkerSpec

    def spec(wid: str, port: int) -> WorkerSpec:
        return WorkerSpec(worker_id=wid, topology_id="wc", port=port, user="alice", command=("x",))

    state = decode_state(json.dumps({
        "format": 1, "node": "n1", "updated_at": 1.0,
        "workers": [{"worker_id": w, "state": s} for w, s in (("wc-1", "running"), ("wc-2", "running"),
                                                               ("wc-3", "backoff"), ("old-1", "stopping"))],
        "engine": [{"worker_id": "wc-1", "state": "running"}, {"worker_id": "wc-2", "state": "exited"},
                   {"worker_id": "wc-3", "state": "running"}, {"worker_id": "old-1", "state": "running"},
                   {"worker_id": "x-1", "state": "running", "owner": "/other/state"}]}).encode(), "n1")
    view = NodeView("n1", workers=[spec("wc-1", 1), spec("wc-2", 2), spec("wc-3", 3), spec("wc-4", 4)], state=state)
    nodes, rows = cluster_rows({"n1": view})
    got = [(r["worker_id"], r["state"], r["engine"], r["orphan"], r["note"]) for r in rows]
    assert got == [
        ("wc-1", "running", "running", False, None),
        ("wc-2", "running", "exited", False, "the engine has it exited"),
        ("wc-3", "backoff", "running", False, "the engine runs it"),
        ("wc-4", None, None, False, None),
        ("old-1", "stopping", "running", True, "no document names it; this node's supervisor: stopping"),
        ("x-1", None, "running", True, "no document names it; another supervisor's (state dir /other/state)"),
    ]
    assert nodes[0]["orphans"] == ["old-1", "x-1"]


@pytest.mark.parametrize("entry", [{"worker_id": "w\x1b[2J", "state": "running"},
                                   {"worker_id": "wc-1", "state": "running\r"},
                                   {"worker_id": "wc-1", "state": "running", "owner": "/x\x1b]0;pwned\x07"},
                                   {"worker_id": "wc-1", "state": "running", "container_id": "ab\ncd"}])
def test_a_nodes_engine_report_is_printable_or_refused(entry: dict[str, str]) -> None:
    """``cluster ps`` prints what nodes report: a terminal escape in it refuses the report."""
    raw = json.dumps({"format": 1, "node": "n1", "updated_at": 1.0, "engine": [entry]}).encode()
    with pytest.raises(ClusterError) as e:
        decode_state(raw, "n1")
    assert (e.value.field or "").startswith("state.engine.0.")


@pytest.mark.parametrize(("fence", "dead_after", "grace", "want"), [
    (None, 30.0, 10.0, None),  # off
    (5.0, None, 10.0, 5.0),  # no document read yet: the operator's number
    (60.0, 30.0, 10.0, 20.0),  # never later than dead_after less the grace period
    (5.0, 30.0, 10.0, 5.0),
    (60.0, 4.0, 10.0, 0.0),  # no room at all: at once (and a WARNING says so)
])
def test_fencing_stops_the_workers_before_the_coordinator_may_move_them(
        fence: float | None, dead_after: float | None, grace: float, want: float | None) -> None:
    from berth._cluster.fencing import fence_after

    assert fence_after(fence, dead_after, grace) == want
