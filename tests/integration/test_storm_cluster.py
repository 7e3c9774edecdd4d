"""A real Storm cluster with Storm's default isolation (no berth): the ground the plugin stands on.

``scripts/storm`` starts Storm's own Nimbus and supervisor from the jars it fetched from Maven
Central; the word count (``storm/topologies``) runs in two workers, its tuples are acked, and a kill
leaves no worker process and no worker dir behind.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench._storm import WORDCOUNT, StormCluster, worker_pids

from .conftest import poll_until

pytestmark = [pytest.mark.integration, pytest.mark.storm]

WAIT = 240.0
"""Storm's own pace: a worker JVM starts in seconds, stats reach Nimbus every 5 s, on 2 shared cores."""


def test_word_count_acks_in_two_workers_and_a_kill_leaves_nothing(storm_cluster: StormCluster) -> None:
    c = storm_cluster
    name = "wc-" + uuid.uuid4().hex[:8]
    c.submit(WORDCOUNT, name, "2")
    info = c.info(name)
    assert info is not None and info["owner"] == "storm" and info["status"] == "ACTIVE"
    topo = info["id"]

    def two_workers() -> bool:
        now = c.info(name)
        return now is not None and len({w["port"] for w in now["workers"]}) == 2

    poll_until(two_workers, "the word count scheduled on two slots", WAIT, every=2)
    poll_until(lambda: c.acked(name) > 0, "acked tuples", WAIT, every=2)
    first = c.acked(name)
    poll_until(lambda: c.acked(name) > first, "the acked count to grow", WAIT, every=2)
    assert len(worker_pids(topo)) == 4  # per worker, Storm's LogWriter JVM and the worker JVM

    local = Path(c.environment()["STORM_SUPERVISOR_LOCAL_DIRS"].split()[0])
    assert len(list((local / "workers").iterdir())) == 2
    c.kill(name)
    poll_until(lambda: c.info(name) is None, "Nimbus to forget the topology", WAIT, every=2)
    poll_until(lambda: worker_pids(topo) == [], "no worker process of the topology", WAIT, every=1)
    poll_until(lambda: list((local / "workers").iterdir()) == [], "no worker dir left", WAIT, every=1)
