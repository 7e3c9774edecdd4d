"""The HTTP API: each endpoint, auth on TCP, bad bodies, metrics, a real unix socket, fuzzing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families

from berth import Node, NodeConfig, Supervisor
from berth._service.api import create_app

from .conftest import ROOT, config_toml, make_config, poll_until
from .test_supervisor import FOREVER, Watch, fast

pytestmark = pytest.mark.integration


@pytest.fixture(params=["docker", "runc"])
def config(request: pytest.FixtureRequest, users: dict[str, Any], base: Path, node_name: str) -> NodeConfig:
    """Every test here runs on the engine and on runc (under berth-shim)."""
    request.getfixturevalue("engine" if request.param == "docker" else "runc_ready")
    return make_config(base, node_name, runtime=request.param)

TOKEN = "s3cret-token-for-tests"


def spec(wid: str, port: int) -> dict[str, Any]:
    return {"worker_id": wid, "topology_id": "topo-api", "port": port, "user": "berth-bob",
            "command": ["python3", "-c", FOREVER], "memory_mb": 48}


@pytest.fixture
def sup(config: NodeConfig) -> Iterator[Supervisor]:
    s = Supervisor(Node(fast(config)))
    s.start()
    yield s
    s.stop(drain=True)


def test_endpoints(sup: Supervisor) -> None:
    watch = Watch(sup)
    client = TestClient(create_app(sup))
    assert client.get("/healthz").json()["status"] == "ok"

    r = client.put("/assignments", json={"workers": [spec("a0", 6800), spec("a1", 6801)]})
    assert r.status_code == 200 and r.json() == {"accepted": ["a0", "a1"], "rejected": []}
    watch.until(lambda: watch.states() == {"a0": "running", "a1": "running"}, "both running")

    listed = client.get("/workers").json()
    assert [w["worker_id"] for w in listed] == ["a0", "a1"]
    assert all(w["state"] == "running" and w["container_id"] for w in listed)
    one = client.get("/workers/a0").json()
    assert one["spec"]["user"] == "berth-bob" and one["restarts"] == 0
    assert client.get("/workers/nope").status_code == 404

    cid = one["container_id"]
    r = client.post("/workers/a0/kill", params={"grace": 1})
    assert r.status_code == 202 and r.json()["worker_id"] == "a0"
    watch.until(lambda: sup.status("a0").restarts == 1 and watch.states()["a0"] == "running", "a0 restarted")
    assert client.get("/workers/a0").json()["container_id"] != cid
    assert client.post("/workers/nope/kill").status_code == 404

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    by_state = {s.labels["state"]: s.value for s in families["berth_workers"].samples}
    assert by_state["running"] == 2
    assert next(s.value for s in families["berth_launches"].samples if s.name == "berth_launches_total") >= 3
    assert next(s.value for s in families["berth_restarts"].samples if s.name == "berth_restarts_total") == 1
    assert {s.labels["worker"] for s in families["berth_worker_memory_bytes"].samples} == {"a0", "a1"}
    assert all(s.value > 0 for s in families["berth_worker_memory_bytes"].samples)
    launch_counts = [s.value for s in families["berth_launch_seconds"].samples if s.name.endswith("_count")]
    assert launch_counts == [3.0]
    exits = {(s.labels["worker"], s.labels["cause"]): s.value for s in families["berth_exits"].samples}
    assert exits == {("a0", "stop"): 1.0}  # an operator's kill: a planned stop, not a crash

    r = client.put("/assignments", json={"workers": [spec("a1", 6801)]})
    assert r.status_code == 200
    watch.until(lambda: list(watch.states()) == ["a1"], "a0 removed")


@pytest.mark.parametrize(("body", "loc_part"), [
    ({"workers": [{**spec("b0", 6810), "port": 0}]}, "port"),
    ({"workers": [{**spec("b0", 6810), "memroy_mb": 3}]}, "memroy_mb"),
    ({"workers": [{**spec("b0", 6810), "user": "root"}]}, "user"),
    ({"workers": "not a list"}, "workers"),
    ({"wrkers": []}, "wrkers"),
    ([1, 2], "body"),
])
def test_bad_bodies_get_4xx_naming_the_field(sup: Supervisor, body: Any, loc_part: str) -> None:
    r = TestClient(create_app(sup)).put("/assignments", json=body)
    assert r.status_code == 422
    locs = [str(p) for d in r.json()["detail"] for p in d["loc"]]
    assert loc_part in locs, r.json()
    assert sup.desired() == {}  # nothing was assigned


def test_a_bad_entry_is_rejected_and_the_valid_ones_are_applied(sup: Supervisor) -> None:
    r = TestClient(create_app(sup)).put("/assignments", json={"workers": [spec("c0", 6820),
                                                                          {**spec("c1", 6821), "port": 70000}]})
    assert r.status_code == 422
    assert r.json()["accepted"] == ["c0"] and r.json()["rejected"][0]["worker_id"] == "c1"
    assert list(sup.desired()) == ["c0"]


def test_tcp_needs_the_token(sup: Supervisor) -> None:
    client = TestClient(create_app(sup, token=TOKEN))
    for method, url in (("get", "/workers"), ("get", "/workers/x"), ("put", "/assignments"),
                        ("get", "/assignments"), ("post", "/workers/x/kill"), ("get", "/metrics"),
                        ("get", "/openapi.json"), ("get", "/docs")):
        r = client.request(method.upper(), url, json={"workers": []})
        assert r.status_code == 401, (method, url)
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/workers", headers={"Authorization": "Bearer wrong-token-xxxxxxx"}).status_code == 401
    assert client.get("/workers", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    brief = client.get("/healthz")  # liveness needs no secret, and tells no more than ok/degraded
    assert brief.status_code == 200 and brief.json() == {"status": "ok"}
    full = client.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert full["status"] == "ok" and full["node"] == sup.config.node.name and "workers" in full
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert "/workers" in client.get("/openapi.json", headers=auth).json()["paths"]
    page = client.get("/docs", headers=auth).text
    assert "PUT /assignments" in page and "<script" not in page and "cdn" not in page.lower()  # offline


def test_a_tcp_listener_without_a_token_is_refused_at_load() -> None:
    from berth import ConfigError
    from berth._core.config import config_from_mapping

    with pytest.raises(ConfigError, match="token"):
        config_from_mapping({"api": {"tcp": "127.0.0.1:7070"}})


def test_serve_on_a_unix_socket_and_ps_shows_supervisor_states(config: NodeConfig, base: Path) -> None:
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(fast(config)))
    sock = Path(config.api_socket)
    proc = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(cfg), "serve", "--drain"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        def bound() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            return sock.exists()

        poll_until(bound, "the API socket", timeout=60)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://berth") as c:
            assert c.get("/healthz").json()["status"] == "ok"
            assert c.put("/assignments", json={"workers": [spec("u0", 6830)]}).status_code == 200
            poll_until(lambda: any(w["state"] == "running" for w in c.get("/workers").json()), "u0 running")
        out = subprocess.run([sys.executable, "-m", "berth", "--config", str(cfg), "ps", "--json"],
                             cwd=ROOT, capture_output=True, text=True, check=True)

        rows = json.loads(out.stdout)
        assert [(r["worker_id"], r["supervisor_state"]) for r in rows] == [("u0", "running")]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert Node(config).ps() == []  # --drain stopped it


def test_openapi_fuzzing_finds_no_server_error(config: NodeConfig) -> None:
    """schemathesis generates requests for every operation of the served OpenAPI document."""
    from hypothesis import given

    app = create_app(Supervisor(Node(fast(config))))  # loop not started: nothing is ever launched
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    errors: list[str] = []
    seen = 0
    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]

        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            nonlocal seen
            response = case.call()
            seen += 1
            degraded = case.formatted_path == "/healthz" and response.status_code == 503  # documented: not started
            if response.status_code >= 500 and not degraded:
                errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        fuzz()
    assert seen >= 100
    assert errors == []


def test_healthz_says_degraded_while_the_runc_monitor_does_not_answer_and_never_waits_for_it(
        sup: Supervisor) -> None:
    """A stopped (SIGSTOP) berth-shim answers nothing: /healthz reports it from a probe of its
    own, bounded, and keeps answering meanwhile; the engine's health on docker is asked the same way."""
    if sup.config.node.runtime != "runc":
        pytest.skip("the runc runtime's monitor")
    from berth._runtimes.runc.runtime import RuncRuntime

    client = TestClient(create_app(sup, token=TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    poll_until(lambda: client.get("/healthz").json()["status"] == "ok", "a healthy node")
    rt = sup.node.runtime
    assert isinstance(rt, RuncRuntime)
    pid = rt.shim.pid()
    assert pid is not None
    os.kill(pid, 19)  # SIGSTOP
    try:
        poll_until(lambda: client.get("/healthz", headers=auth).json().get("engine") == "shim unresponsive",
                   "/healthz to see the shim unresponsive")
        r = client.get("/healthz", headers=auth)
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        assert client.get("/healthz").json() == {"status": "degraded"}
    finally:
        os.kill(pid, 18)  # SIGCONT
    poll_until(lambda: client.get("/healthz").json()["status"] == "ok", "/healthz to be ok again")
