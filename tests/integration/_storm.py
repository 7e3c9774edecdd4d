"""A real Apache Storm cluster for the Storm tests: ``scripts/storm`` on an instance of the session's own.

The cluster runs Storm's own Nimbus and supervisor JVMs (as the ``storm`` user) against the shared
ZooKeeper ensemble, in a chroot of its own, on ports the script picks free; it is purged (daemons,
leftover workers, dirs, chroot) at the end of the session. Under CI a cluster that cannot start
fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from bench._storm import StormCluster, StormError

from ._cluster import Ensemble
from .conftest import ROOT, SOCKET, _unavailable

STORM_IMAGE = "berth/storm:latest"
"""Storm's worker image (``scripts/build-images``): Debian's Java 17 at the supervisor's JAVA_HOME."""


@pytest.fixture(scope="session")
def storm_cluster(zookeeper: Ensemble, users: dict[str, Any]) -> Iterator[StormCluster]:
    """Nimbus and one supervisor with Storm's default isolation (no plugin, run-as-user off)."""
    if os.geteuid() != 0:
        _unavailable("the Storm tests need root (scripts/storm creates the storm user and switches to it)")
    cluster = StormCluster()
    try:
        cluster.start()
    except StormError as e:
        cluster.run("purge", check=False)
        _unavailable(f"cannot start Storm: {e}")
    yield cluster
    cluster.purge()


@pytest.fixture(scope="session")
def storm_image(engine: str) -> str:
    """``berth/storm:latest`` in the engine and its image directory for runc (built if missing)."""
    built = subprocess.run([ROOT / "scripts/build-images", "--only", "storm"], capture_output=True, text=True,
                           env={**os.environ, "DOCKER_HOST": SOCKET})
    if built.returncode != 0:
        _unavailable(f"cannot build {STORM_IMAGE}: {built.stdout[-2000:]}{built.stderr[-2000:]}")
    return STORM_IMAGE
