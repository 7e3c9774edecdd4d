"""Issue 18 item 10 against the real ensemble: a node's self-declared capacity is its own word; the
coordinator places on it no more than its own per-node maxima allow."""

from __future__ import annotations

import pytest

from ._cluster import Cluster, worker_topology

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def test_the_coordinator_caps_what_a_node_claims(cluster: Cluster) -> None:
    c = cluster
    c.add_node("big", memory_mb=100_000, cpu_percent=100 * 4096)  # its config claims a machine it is not
    c.start_agent("big")
    c.until_znode(c.layout.live(c.node("big")), True, "the agent to register")
    assert c.views()[c.node("big")].live.capacity.cpu_percent == 100 * 4096  # type: ignore[union-attr]
    c.settings = c.settings.model_copy(update={"node_max_cpu_percent": 20, "node_max_memory_mb": 1000})
    result = c.schedule({"wc": worker_topology(5)})  # 10% cpu, 48 MiB each
    assert result.placement.unplaced == {f"{c.prefix}-wc": 3}
    assert len(result.placement.docs[c.node("big")]) == 2
