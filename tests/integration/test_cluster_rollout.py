"""Changing a topology on a real cluster: "converged" means the new workers run, and workers are
replaced a few at a time (a rolling replacement), never all at once."""

from __future__ import annotations

from typing import Any

import pytest

from ._cluster import Cluster, worker_topology

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.pause()\n"
"""A worker that ignores SIGTERM: each stop takes the whole grace period (1 s in these tests)."""


def stubborn(n: int, **kw: Any) -> dict[str, Any]:
    return {**worker_topology(n, **kw), "command": ["python3", "-c", STUBBORN]}


def test_converged_only_once_the_replacements_run(cluster: Cluster) -> None:
    c = cluster
    a = c.add_node("a", parallel_stops=1)  # one stop or replacement at a time, each the whole grace period
    c.start_agent("a")
    c.until_znode(c.layout.live(a.name), True, "the agent to register")
    c.converge(c.schedule({"slow": stubborn(1), "wc": stubborn(3)}).versions)
    old = {w: cid for w, cid in c.running("a").items() if c.topology_of(w) == "wc"}
    assert len(old) == 3
    c.converge(c.schedule({"wc": stubborn(3, env={"GENERATION": "2"})}).versions)
    now = c.running("a")
    assert not set(now.values()) & set(old.values()), "converged while old containers still ran"
    assert set(now) == set(old), "converged while a removed worker still ran"  # wc's updated in place
