"""The CLI against a real dockerd: launch --wait, ps --json, mem, exec, logs, kill, rm, recover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from berth import NodeConfig
from berth._cli import main

from .conftest import config_toml, poll_until

pytestmark = pytest.mark.integration

PS_KEYS = {"worker_id", "topology_id", "port", "user", "image", "state", "exit_code", "oom_killed", "oom_victim",
           "main_stopped", "memory_bytes", "started_at", "finished_at", "signal", "exact", "status_lost", "how"}


def run(cfg: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--config", str(cfg), *args])
    return r.exit_code, r.output


def test_cli_lifecycle(config: NodeConfig, base: Path) -> None:
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(config))
    common = ["--topology", "topo-c", "--user", "berth-alice", "--memory", "64"]

    code, out = run(cfg, "launch", "--worker-id", "c-exit", "--port", "6900", *common, "--wait", "--",
                    "python3", "-c", "print('bye'); raise SystemExit(7)")
    assert code == 7, out  # the worker's own exit code

    code, out = run(cfg, "launch", "--worker-id", "c-run", "--port", "6901", *common, "--",
                    "python3", "-c", "import signal; print('up', flush=True); signal.pause()")
    assert code == 0 and len(out.strip()) == 64  # the container id

    code, out = run(cfg, "ps", "--json")
    rows = {r["worker_id"]: r for r in json.loads(out)}
    assert set(rows) == {"c-exit", "c-run"}
    assert all(set(r) == PS_KEYS for r in rows.values())
    assert rows["c-exit"]["state"] == "exited" and rows["c-exit"]["exit_code"] == 7
    assert rows["c-run"]["state"] == "running" and rows["c-run"]["memory_bytes"] > 0
    assert rows["c-run"]["user"] == "berth-alice" and rows["c-run"]["port"] == 6901

    code, out = run(cfg, "ps")
    assert code == 0 and "c-run" in out and "running" in out

    code, out = run(cfg, "mem", "c-run")
    assert code == 0 and int(out) > 0
    code, out = run(cfg, "exec", "c-run", "--", "id", "-u")
    assert code == 0 and out.strip() == "2101"
    code, out = run(cfg, "exec", "c-run", "--", "sh", "-c", "exit 4")
    assert code == 4
    poll_until(lambda: "up" in run(cfg, "logs", "c-run")[1], "c-run's output")
    code, out = run(cfg, "logs", "c-exit")
    assert out.strip() == "bye"

    code, out = run(cfg, "kill", "c-run", "--grace", "1")
    assert code == 0 and "exited, exit code 143" in out  # python's default SIGTERM action: 128+15

    code, out = run(cfg, "recover")
    assert code == 0 and "c-run: killed by SIGTERM" in out and "c-exit: exit code 7" not in out  # already reported
    code, out = run(cfg, "rm", "c-run")
    assert code == 0 and "removed" in out
    code, out = run(cfg, "mem", "c-run")
    assert code == 125 and out.startswith("error: worker_id: no worker 'c-run'")
    code, out = run(cfg, "rm", "c-exit")
    assert json.loads(run(cfg, "ps", "--json")[1]) == []


def test_launch_errors_are_one_line(config: NodeConfig, base: Path) -> None:
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(config))
    code, out = run(cfg, "launch", "--worker-id", "c1", "--topology", "tt", "--port", "1", "--user", "berth-alice",
                    "--image", "berth/busybox:missing", "--", "true")
    assert code == 125 and out.startswith("error: image: ") and out.count("\n") == 1
    code, out = run(cfg, "kill", "nobody-here")
    assert code == 125 and out == "error: worker_id: no worker 'nobody-here' on this node\n"
