"""A node's health and listing tell the truth, at once: with the engine frozen, /healthz and
/metrics answer within a second that it does not answer; a worker rejected at launch and then
unassigned leaves every listing and count, also after a restart of ``serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth import NodeConfig

from .conftest import PRIVATE_ENV, PY_IMAGE, ROOT, PrivateEngine, config_toml, poll_until, purge

pytestmark = pytest.mark.integration

FOREVER = "import signal\nsignal.pause()\n"
ABSENT = "berth/absent:1"
"""Allowed by the node's config, never in the engine: a launch of it is rejected."""


def spec(wid: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"worker_id": wid, "topology_id": "topo-health", "port": port, "user": "berth-bob",
            "command": ["python3", "-c", FOREVER], "memory_mb": 48, **kw}


class Serve:
    """``berth serve`` in a process of its own, and a client on its socket (5 s per request: a
    generous bound on what must take well under a second)."""

    def __init__(self, config: NodeConfig, base: Path) -> None:
        self.cfg = base / "berth.toml"
        self.cfg.write_text(config_toml(config).replace(
            f'default = "{PY_IMAGE}"\n', f'default = "{PY_IMAGE}"\nallowed = ["{PY_IMAGE}", "{ABSENT}"]\n'))
        self.sock = Path(config.api_socket)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> httpx.Client:
        self.proc = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(self.cfg), "serve"], cwd=ROOT,
                                     stderr=subprocess.PIPE, text=True)

        def bound() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.proc.stderr.read() if self.proc \
                and self.proc.stderr else ""
            return self.sock.exists()

        poll_until(bound, "the API socket", 60)
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)), base_url="http://berth", timeout=5.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        poll_until(lambda: not self.sock.exists(), "the socket to go", 60)


@pytest.fixture
def frozen_config(private_engine: PrivateEngine, base: Path, node_name: str) -> Iterator[NodeConfig]:
    yield private_engine.config(base, node_name)
    private_engine.purge(node_name)


def test_health_and_metrics_answer_while_the_engine_is_frozen(frozen_config: NodeConfig, base: Path) -> None:
    serve = Serve(frozen_config, base)
    h = serve.start()
    dockerd = int(Path(PRIVATE_ENV["BERTH_DEV_RUN"], "dockerd.pid").read_text())
    try:
        assert h.put("/assignments", json={"workers": [spec("h1", 6840)]}).status_code == 200
        poll_until(lambda: h.get("/healthz").json()["workers"]["running"] == 1, "h1 running", 60)
        os.kill(dockerd, signal.SIGSTOP)
        try:
            poll_until(lambda: h.get("/healthz").json()["engine"] == "not answering", "the engine to be reported "
                       "as not answering", 30, every=0.2)
            health = h.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            metrics = h.get("/metrics")
            assert metrics.status_code == 200
            assert "berth_engine_up 0.0" in metrics.text and 'berth_workers{state="running"} 1.0' in metrics.text
        finally:
            os.kill(dockerd, signal.SIGCONT)
        poll_until(lambda: h.get("/healthz").json()["status"] == "ok", "the engine to be back", 60, every=0.2)
        assert "berth_engine_up 1.0" in h.get("/metrics").text
    finally:
        h.close()
        serve.stop()


def test_a_worker_rejected_at_launch_then_unassigned_leaves_every_listing(config: NodeConfig, base: Path,
                                                                          node_name: str) -> None:
    serve = Serve(config, base)
    h = serve.start()
    try:
        put = h.put("/assignments", json={"workers": [spec("r1", 6841), spec("r2", 6842, image=ABSENT)]})
        assert put.status_code == 200, put.text
        poll_until(lambda: {w["worker_id"]: w["state"] for w in h.get("/workers").json()} ==
                   {"r1": "running", "r2": "rejected"}, "r1 running, r2 rejected at launch", 60)
        # restarted while it is assigned: still rejected (not retried on its own), not pending
        h.close()
        serve.stop()
        h = serve.start()

        def settled() -> bool:
            workers = {w["worker_id"]: w for w in h.get("/workers").json()}
            return h.get("/healthz").json()["last_pass_age_s"] is not None and \
                {w: x["state"] for w, x in workers.items()} == {"r1": "running", "r2": "rejected"} and \
                not any(x["busy"] for x in workers.values())

        poll_until(settled, "r1 adopted, r2 rejected, a pass done", 60)
        assert h.get("/healthz").json()["workers"]["pending"] == 0
        assert "berth_launch_failures_total 0.0" in h.get("/metrics").text, "r2 was tried again on its own"
        # unassigned: gone from every listing and count
        assert h.put("/assignments", json={"workers": [spec("r1", 6841)]}).status_code == 200
        poll_until(lambda: [w["worker_id"] for w in h.get("/workers").json()] == ["r1"], "r2 to leave /workers", 60)
        assert not [r for r in h.get("/assignments").json()["rejected"] if r["worker_id"] == "r2"]
        h.close()
        serve.stop()
        h = serve.start()
        poll_until(lambda: h.get("/healthz").json()["workers"]["running"] == 1, "r1 adopted", 60)
        assert [w["worker_id"] for w in h.get("/workers").json()] == ["r1"]
        counts = h.get("/healthz").json()["workers"]
        assert counts["pending"] == 0 and counts["rejected"] == 0
        assert 'berth_workers{state="pending"} 0.0' in h.get("/metrics").text
    finally:
        h.close()
        serve.stop()
        purge(node_name)
