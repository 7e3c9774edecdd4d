"""`berth demo` end to end: it must succeed, report the OOM kill, and leave no container behind."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from berth import Node
from berth._cli.demo import DEMO_WORKERS, run_demo

pytestmark = pytest.mark.integration


def test_demo_runs_and_cleans_up(node: Node) -> None:
    out = io.StringIO()
    assert run_demo(node, Console(file=out, width=200)) == 0
    text = out.getvalue()
    assert "wc-a2 ended: exit code 137, signal SIGKILL, OOM-killed" in text
    assert "sess-b1 ended: exit code 0" in text
    assert text.count(": PASS — ") == 3  # berth audit passes on each of the demo's workers
    ids = {w[0] for w in DEMO_WORKERS}
    assert not [w for w in node.ps() if w.worker_id in ids]
