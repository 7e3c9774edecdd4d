"""Issue 18 item 5 on the real engine: the node's capacity holds at every entry point.

`berth launch` (other processes' workers counted, concurrent launches never both fitting the
last room), `berth serve` (a worker past the capacity waits, shown in ps, the API and metrics,
and starts when capacity frees) and `berth explain` (the capacity and what is admitted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth import Node, NodeConfig
from berth._core.config import config_from_mapping

from .conftest import ROOT, config_toml, poll_until

pytestmark = pytest.mark.integration

FOREVER = "import signal; signal.pause()"


def capped(config: NodeConfig, base: Path, **capacity: int) -> tuple[NodeConfig, Path]:
    cfg = config_from_mapping({**config.model_dump(), "capacity": capacity})
    path = base / "berth.toml"
    path.write_text(config_toml(cfg))
    return cfg, path


def berth(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "berth", "--config", str(cfg), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def launch_args(wid: str, port: int, memory: int = 64) -> list[str]:
    return ["launch", "--worker-id", wid, "--topology", "topo-adm", "--port", str(port), "--user", "berth-alice",
            "--memory", str(memory), "--cpu", "50", "--", "python3", "-c", FOREVER]


def running(config: NodeConfig) -> list[str]:
    return sorted(w.worker_id for w in Node(config).ps() if w.running)


def test_launch_refuses_a_worker_past_the_capacity_naming_the_field(config: NodeConfig, base: Path) -> None:
    cfg, path = capped(config, base, memory_mb=200, cpu_percent=1000, pids=100000)
    assert berth(path, *launch_args("a0", 6800, 120)).returncode == 0
    r = berth(path, *launch_args("a1", 6801, 120))
    assert (r.returncode, r.stderr) == (125, "error: memory_mb: 120 MiB more would exceed the node's capacity of "
                                             "200 MiB (capacity.memory_mb): its 1 worker(s) hold 120 MiB\n")
    assert running(cfg) == ["a0"]
    r = berth(path, *launch_args("a2", 6802, 300))
    assert r.returncode == 125 and "is above the node's capacity of 200 MiB (capacity.memory_mb): it can never" \
        in r.stderr
    out = berth(path, "explain", "--worker-id", "a3", "--topology", "topo-adm", "--port", "6803", "--user",
                "berth-alice", "--memory", "100", "--format", "text", "--", "true").stdout.splitlines()
    assert "capacity  memory 200 MiB, cpu 1000%, pids 100000" in out
    assert "admitted  1 worker(s): memory 120 MiB, cpu 50%, pids 1024" in out
    assert out[-1].startswith("this one  does not fit: memory_mb: 100 MiB more would exceed")
    assert berth(path, "rm", "a0").returncode == 0
    assert berth(path, *launch_args("a1", 6801, 120)).returncode == 0  # room again
    assert running(cfg) == ["a1"]


def test_concurrent_launches_never_both_take_the_last_room(config: NodeConfig, base: Path) -> None:
    """Six `berth launch` processes at once for three places: three run, three are refused for
    capacity, whatever order they came in."""
    cfg, path = capped(config, base, memory_mb=1000, cpu_percent=150, pids=100000)
    procs = [subprocess.Popen([sys.executable, "-m", "berth", "--config", str(path), *launch_args(f"c{i}", 6810 + i)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    results = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in procs]
    ok = [i for i, (code, _) in enumerate(results) if code == 0]
    refused = [err for code, err in results if code != 0]
    assert len(ok) == 3, results
    assert all(err.startswith("error: cpu_percent: 50% more would exceed the node's capacity of 150%")
               for err in refused), refused
    assert running(cfg) == sorted(f"c{i}" for i in ok)


def test_serve_keeps_a_worker_past_the_capacity_waiting_and_starts_it_when_room_frees(
        config: NodeConfig, base: Path) -> None:
    cfg, path = capped(config, base, memory_mb=1000, cpu_percent=100, pids=100000)
    child = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(path), "serve"], cwd=ROOT,
                             stderr=subprocess.DEVNULL)
    sock = Path(cfg.api_socket)
    try:
        poll_until(lambda: sock.exists(), "the API socket", timeout=60)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://berth", timeout=30) as c:
            def w(wid: str, port: int) -> dict[str, Any]:
                return {"worker_id": wid, "topology_id": "topo-adm", "port": port, "user": "berth-alice",
                        "command": ["python3", "-c", FOREVER], "memory_mb": 64, "cpu_percent": 50}

            assert c.put("/assignments", json={"workers": [w("s0", 6820), w("s1", 6821), w("s2", 6822)]}
                         ).status_code == 200

            def states() -> dict[str, str]:
                return {x["worker_id"]: x["state"] for x in c.get("/workers").json()}

            poll_until(lambda: states() == {"s0": "running", "s1": "running", "s2": "no-capacity"}, "s2 waiting")
            ps = json.loads(berth(path, "ps", "--json").stdout)
            assert [r["supervisor_state"] for r in ps if r["worker_id"] == "s2"] == ["no-capacity"]
            table = berth(path, "ps").stdout
            assert "waiting for capacity: api (s2): cpu_percent: 50% more would exceed" in table
            metrics = c.get("/metrics").text
            assert 'berth_workers{state="no-capacity"} 1.0' in metrics
            assert 'berth_node_admitted{resource="cpu_percent"} 100.0' in metrics
            before = {x.worker_id: x.container_id for x in Node(cfg).ps()}
            assert c.put("/assignments", json={"workers": [w("s1", 6821), w("s2", 6822)]}).status_code == 200
            poll_until(lambda: states() == {"s1": "running", "s2": "running"}, "s2 started once s0 went")
            assert {x.worker_id: x.container_id for x in Node(cfg).ps()}["s1"] == before["s1"]
            assert c.put("/assignments", json={"workers": []}).status_code == 200
            poll_until(lambda: running(cfg) == [], "all removed")
    finally:
        child.terminate()
        child.wait(timeout=120)
