from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from berth import HostFacts, Identity, NodeConfig
from berth._core.config import config_from_mapping

ALICE = Identity(user="alice", uid=1001, gid=1001, groups=(1001, 2001))
FOUR_CPUS = HostFacts(cpus=frozenset({0, 1, 2, 3}), mems=frozenset({0}))

if TYPE_CHECKING:
    from ._supfake import Harness


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A node's base dir that the workers' made-up uids can traverse."""
    os.chmod(tmp_path, 0o755)
    return tmp_path


@pytest.fixture
def h(base: Path) -> Iterator[Harness]:
    """A started supervisor on the fake runtime, stopped after the test."""
    from ._supfake import Harness

    harness = Harness(base).start()
    yield harness
    harness.sup.stop()


@pytest.fixture
def stop_all() -> Iterator[list[Harness]]:
    """Supervisors a test starts itself; those still holding their lock are stopped after it."""
    started: list[Harness] = []
    yield started
    for harness in started:
        if harness.sup.lock.held:
            harness.sup.stop()


@pytest.fixture
def node_paths(tmp_path: Path) -> dict[str, Path]:
    """A node's operator-owned paths (install dir, nscd dir, a read-only mount, a seccomp file)."""
    paths = {
        "home": tmp_path / "storm home",  # a space, which broke Storm's launcher
        "nscd": tmp_path / "nscd",
        "ro": tmp_path / "etc-storm",
        "rw": tmp_path / "scratch",
        "seccomp": tmp_path / "seccomp.json",
    }
    for key in ("home", "nscd", "ro", "rw"):
        paths[key].mkdir()
    paths["seccomp"].write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    return paths


def make_config(paths: dict[str, Path], **container: object) -> NodeConfig:
    return config_from_mapping({
        "node": {"name": "node1", "local_dir": "/data/storm", "log_dir": "/logs/storm",
                 "install_dir": str(paths["home"])},
        "images": {"default": "storm/worker:2.6", "allowed": ("storm/worker:2.6", "storm/py:3")},
        "container": {"nscd_dir": str(paths["nscd"]), "seccomp_profile": str(paths["seccomp"]),
                      "readonly_mounts": (str(paths["ro"]),), "cgroup_parent": "storm", **container},
    })
