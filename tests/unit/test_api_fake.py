"""The HTTP API over a supervisor on the in-memory runtime: tenant tokens (issue 9 item 6), what an
unauthenticated caller sees (issue 9 item 11), one error shape, ISO times, 202 at once (issue 10 item 15).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from berth._core.serviceconfig import TenantToken
from berth._service.api import create_app

from ._supfake import Harness

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to made-up uids")

OPERATOR = "operator-token-0123456789"
ALICE_T = TenantToken(name="team-a", token="alice-token-0123456789", users=("alice",), topologies=("wc-*",))
BOB_T = TenantToken(name="team-b", token="bob-token-0123456789ab", users=("bob",))
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def entry(wid: str, port: int, user: str = "alice", topology: str = "wc-1") -> dict[str, Any]:
    return {"worker_id": wid, "topology_id": topology, "port": port, "user": user, "command": ["run"]}


@pytest.fixture
def tcp(h: Harness) -> TestClient:
    return TestClient(create_app(h.sup, token=OPERATOR, tenants=(ALICE_T, BOB_T)))


def test_a_tenant_may_launch_only_as_its_users_and_topologies(h: Harness, tcp: TestClient) -> None:
    r = tcp.put("/assignments", json={"workers": [entry("a1", 6700)]}, headers=bearer(ALICE_T.token))
    assert r.status_code == 200 and r.json()["accepted"] == ["a1"]
    for bad, field in ((entry("a2", 6701, user="bob"), "user"), (entry("a3", 6702, topology="other-1"), "topology_id")):
        r = tcp.put("/assignments", json={"workers": [entry("a1", 6700), bad]}, headers=bearer(ALICE_T.token))
        assert r.status_code == 403, r.json()
        [item] = r.json()["detail"]
        assert item["loc"] == ["body", "workers", 1, field] and item["type"] == "forbidden"
        assert "team-a" in item["msg"]
    r = tcp.put("/assignments", json={"workers": [], "version": "v9"}, headers=bearer(ALICE_T.token))
    assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["body", "version"]
    assert sorted(h.sup.desired()) == ["a1"]  # nothing of a refused request was applied


def test_a_tenant_sees_and_changes_only_its_own_workers(h: Harness, tcp: TestClient) -> None:
    r = tcp.put("/assignments", json={"workers": [entry("a1", 6700)]}, headers=bearer(ALICE_T.token))
    assert r.status_code == 200
    r = tcp.put("/assignments", json={"workers": [entry("b1", 6701, user="bob", topology="sess")]},
                headers=bearer(BOB_T.token))
    assert r.status_code == 200 and r.json()["accepted"] == ["b1"]
    assert sorted(h.sup.desired()) == ["a1", "b1"]  # bob's put replaced bob's part only
    h.running("a1", "b1")
    assert [w["worker_id"] for w in tcp.get("/workers", headers=bearer(BOB_T.token)).json()] == ["b1"]
    assert tcp.get("/workers/a1", headers=bearer(BOB_T.token)).status_code == 404  # not even its existence
    assert tcp.post("/workers/a1/kill", headers=bearer(BOB_T.token)).status_code == 404
    r = tcp.put("/assignments", json={"workers": [entry("a1", 6702, user="bob", topology="sess")]},
                headers=bearer(BOB_T.token))
    assert r.status_code == 403 and "belongs to another tenant" in r.json()["detail"][0]["msg"]
    assert [w["worker_id"] for w in tcp.get("/assignments", headers=bearer(BOB_T.token)).json()["workers"]] == ["b1"]
    assert tcp.get("/metrics", headers=bearer(BOB_T.token)).status_code == 403
    assert tcp.get("/metrics", headers=bearer(OPERATOR)).status_code == 200
    assert sorted(w["worker_id"] for w in tcp.get("/workers", headers=bearer(OPERATOR)).json()) == ["a1", "b1"]


def test_without_a_token_only_a_brief_health(tcp: TestClient) -> None:
    for url in ("/workers", "/assignments", "/metrics", "/openapi.json", "/docs"):
        r = tcp.get(url)
        assert r.status_code == 401 and r.json()["detail"][0]["type"] == "http_error", url
    assert tcp.get("/workers", headers=bearer("not-a-token-at-all-x")).status_code == 401
    assert set(tcp.get("/healthz").json()) == {"status"}
    assert "node" in tcp.get("/healthz", headers=bearer(BOB_T.token)).json()


def test_one_error_shape_and_iso_times(h: Harness, tcp: TestClient) -> None:
    op = bearer(OPERATOR)
    shapes = [tcp.get("/workers/nope", headers=op), tcp.put("/assignments", json={"wrkers": []}, headers=op),
              tcp.get("/workers"), tcp.post("/workers/nope/kill", params={"grace": -1}, headers=op)]
    assert [r.status_code for r in shapes] == [404, 422, 401, 422]
    for r in shapes:
        assert list(r.json()) == ["detail"] and all(set(d) == {"loc", "msg", "type"} for d in r.json()["detail"])
    tcp.put("/assignments", json={"workers": [entry("a1", 6700)]}, headers=op)
    h.running("a1")
    w = tcp.get("/workers/a1", headers=op).json()
    assert ISO.fullmatch(w["since"]), w["since"]
    spec = tcp.get("/openapi.json", headers=op).json()
    for name in ("WorkerOut", "RejectionOut", "ErrorBody", "AssignmentsOut"):
        assert name in spec["components"]["schemas"]


def test_kill_answers_202_at_once_and_the_stop_goes_on(h: Harness, tcp: TestClient) -> None:
    tcp.put("/assignments", json={"workers": [entry("a1", 6700)]}, headers=bearer(OPERATOR))
    h.running("a1")
    first = h.containers()["a1"]
    gate = h.fake.hold_stops("a1")  # the stop takes as long as the test says
    r = tcp.post("/workers/a1/kill", params={"grace": 30}, headers=bearer(ALICE_T.token))
    assert r.status_code == 202 and h.containers()["a1"] == first
    gate.set()
    h.watch.until(lambda: h.containers().get("a1") not in (None, first), "a1 restarted")


def test_rejections_are_shown_by_get_assignments(h: Harness, tcp: TestClient) -> None:
    op = bearer(OPERATOR)
    r = tcp.put("/assignments", json={"workers": [entry("a1", 6700), entry("a2", 6700)], "version": "v3"}, headers=op)
    assert r.status_code == 422 and r.json()["accepted"] == ["a1"]
    got = tcp.get("/assignments", headers=op).json()
    assert got["version"] == "v3" and [w["worker_id"] for w in got["workers"]] == ["a1"]
    assert [(x["worker_id"], x["field"]) for x in got["rejected"]] == [("a2", "port")]


def test_a_read_only_socket_refuses_changes(h: Harness) -> None:
    client = TestClient(create_app(h.sup, read_only=True))
    r = client.put("/assignments", json={"workers": []})
    assert r.status_code == 403 and "read-only" in r.json()["detail"][0]["msg"]
    assert client.get("/workers").status_code == 200


def test_a_body_over_the_limit_is_refused_unread(h: Harness) -> None:
    from berth._service.apimodels import MAX_BODY_BYTES

    client = TestClient(create_app(h.sup))
    big = b'{"workers": [' + b" " * MAX_BODY_BYTES + b"]}"
    r = client.put("/assignments", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["msg"].startswith("the body is larger than")

    def chunks() -> Iterator[bytes]:
        yield b'{"workers": ['
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
            yield b" " * (1 << 20)

    r = client.put("/assignments", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_tenant_learns_nothing_of_another_tenants_workers_from_a_refusal(h: Harness, tcp: TestClient) -> None:
    """Another tenant's port or topology is refused without naming its worker (nor its user)."""
    r = tcp.put("/assignments", json={"workers": [entry("a1", 6700)]}, headers=bearer(ALICE_T.token))
    assert r.status_code == 200
    for bad, field in ((entry("b1", 6700, user="bob", topology="sess"), "port"),
                       (entry("b2", 6702, user="bob", topology="wc-1"), "topology_id")):
        r = tcp.put("/assignments", json={"workers": [bad]}, headers=bearer(BOB_T.token))
        assert r.status_code == 403, r.text
        [item] = r.json()["detail"]
        assert item["loc"] == ["body", "workers", 0, field] and item["type"] == "forbidden"
        assert "a1" not in r.text and "alice" not in r.text, r.text
    assert sorted(h.sup.desired()) == ["a1"]
    got = tcp.get("/assignments", headers=bearer(BOB_T.token)).json()
    assert got["workers"] == [] and "a1" not in str(got)


@pytest.mark.parametrize("bad", [{"worker_id": []}, {"port": [6700]}, {"topology_id": {}}, {"user": None}])
def test_a_tenants_malformed_entry_is_a_4xx_not_a_server_error(tcp: TestClient, bad: dict[str, Any]) -> None:
    r = tcp.put("/assignments", json={"workers": [{**entry("a1", 6700), **bad}]}, headers=bearer(ALICE_T.token))
    assert r.status_code in (403, 422), r.text
    assert r.json()["detail"][0]["loc"][:3] == ["body", "workers", 0]


def test_a_tenants_health_counts_only_its_own_workers(h: Harness, tcp: TestClient) -> None:
    tcp.put("/assignments", json={"workers": [entry("a1", 6700), entry("a2", 6701), entry("b1", 6702, user="bob",
                                                                                          topology="sess")]},
            headers=bearer(OPERATOR))
    h.running("a1", "a2", "b1")
    mine = tcp.get("/healthz", headers=bearer(BOB_T.token)).json()
    assert mine["workers"]["running"] == 1 and "conflicts" not in mine and "state_problem" not in mine
    assert tcp.get("/healthz", headers=bearer(OPERATOR)).json()["workers"]["running"] == 3
