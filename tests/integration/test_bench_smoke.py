"""The benchmark's smoke test: ``python -m bench all --quick`` with tiny sizes gives well-formed JSON.

Not a benchmark (the numbers are not looked at): it checks that every launcher runs end to end on
the test engine, that ``--json`` is the documented object, and that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from .conftest import ROOT

pytestmark = pytest.mark.integration

LAUNCHERS = ("berth", "berth_runc", "storm_style", "sdk", "runc", "runc_noseccomp")
SEQUENTIAL = ("launch_p50_ms", "launch_p90_ms", "exit_detect_p50_ms")
"""All that is measured of bare runc without a filter (it is there for the seccomp cost)."""
FIELDS = ("launch_p50_ms", "launch_p90_ms", "throughput_50_s", "exit_detect_p50_ms", "threads_100",
          "children_100", "rss_100_mb", "idle_cpu_s_100", "memory_read_us")


def test_quick_bench_gives_well_formed_json(engine: str, users: object, runc_ready: None, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = uuid.uuid4().hex[:6]  # what this run leaves behind is told apart from any other bench's
    done = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--quick", "--n", "2", "--concurrent", "3", "--watch", "3",
         "--idle", "1", "--engine", engine, "--json", "--out", str(tmp_path), "--run-id", run],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert set(result) == set(LAUNCHERS)
    for name in LAUNCHERS:
        assert set(result[name]) == set(FIELDS), name
        for field in FIELDS:
            value = result[name][field]
            assert value is None or (isinstance(value, int | float) and not isinstance(value, bool)), (name, field)
            assert (value is not None) == (name != "runc_noseccomp" or field in SEQUENTIAL), (name, field)
    assert result["berth"]["children_100"] == 0
    assert result["berth_runc"]["children_100"] == 1  # berth-shim, whatever the number of workers
    assert (tmp_path / "benchmarks.md").exists()
    assert sorted(p.name for p in tmp_path.glob("bench-*.png")) == [
        "bench-launch.png", "bench-memory.png", "bench-throughput.png", "bench-watch.png"]
    client = docker.APIClient(base_url=engine, version="auto")
    left = [c["Names"] for c in client.containers(all=True) if any(n.startswith(f"/bnch-{run}-") for n in c["Names"])]
    assert left == []
    shims = [p for p in Path("/proc").iterdir() if p.name.isdigit() and f"/{run}/".encode() in _cmdline(p)]
    assert shims == []  # the berth_runc node's shim was stopped


def _cmdline(p: Path) -> bytes:
    try:
        return p.joinpath("cmdline").read_bytes()
    except OSError:
        return b""
