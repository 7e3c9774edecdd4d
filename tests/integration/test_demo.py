"""`berth demo` end to end: it must succeed, report the OOM kill, and leave no container behind."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from berth import Node
from berth._cli.demo import DEMO_WORKERS, run_demo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("runtime", ["docker", "runc"])
def test_demo_runs_and_cleans_up(runtime: str, request: pytest.FixtureRequest) -> None:
    node: Node = request.getfixturevalue("node" if runtime == "docker" else "runc_node")
    out = io.StringIO()
    assert run_demo(node, Console(file=out, width=200)) == 0
    text = out.getvalue()
    assert "wc-a2 ended: exit code 137, signal SIGKILL, OOM-killed" in text
    if runtime == "runc":
        assert "killed by SIGKILL, out of memory" in text
    assert "sess-b1 ended: exit code 0" in text
    assert text.count(": PASS — ") == 3  # berth audit passes on each of the demo's workers
    ids = {w[0] for w in DEMO_WORKERS}
    assert not [w for w in node.ps() if w.worker_id in ids]
