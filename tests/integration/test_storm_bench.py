"""The Storm bench's smoke test: ``python -m bench.storm --quick --json`` gives well-formed JSON and
leaves no cluster behind. Not a benchmark: the numbers are not looked at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.storm]

INSTANCES = Path("/var/lib/berth-dev/storm/instances")
STATS = {"p50", "min", "max"}


def test_quick_storm_bench_gives_well_formed_json(zookeeper: object, users: object, storm_image: str,
                                                  runc_ready: None, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.storm", "--quick", "--json", "--out", str(tmp_path),
                           "--variants", "default,berth_runc"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert set(result) == {"default", "berth_runc"}
    for r in result.values():
        assert r["rounds"] == 1 and len(r["raw"]) == 1
        for key in ("submit_to_ack_s", "kill_to_ack_s", "supervisor_mb", "worker_mb"):
            assert set(r[key]) == STATS and all(isinstance(v, int | float) for v in r[key].values()), key
        assert len(r["raw"][0]["workers_mb"]) == 2
    assert result["default"]["overhead_mb"] == {}
    assert set(result["berth_runc"]["overhead_mb"]) == {"berth serve", "berth-shim"}  # one shim for all workers
    assert (tmp_path / "bench-storm.md").read_text().startswith("| variant |")
    assert (tmp_path / "bench-storm.png").stat().st_size > 0
    for r in result.values():
        assert not (INSTANCES / r["instance"]).exists()  # each variant's cluster was purged
