"""Storm's side of a launch, made by hand: the directories Storm's supervisor makes (as its own
user) before it calls the plugin, and a node configured for Storm on the in-memory runtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from berth import Identity, Node, NodeConfig
from berth._core.config import config_from_mapping
from berth._node.stormdirs import StormDirs
from berth._runtimes.fake.runtime import FakeRuntime
from berth._storm.yaml import BERTH_PLUGIN

from .conftest import FOUR_CPUS

STORM_UID = STORM_GID = 3900
"""Storm's supervisor (made up): it makes every directory below before the launch."""
USERS = {"alice": Identity(user="alice", uid=3101, gid=3101, groups=(3101,)),
         "bob": Identity(user="bob", uid=3102, gid=3102, groups=(3102,)),
         "mallory": Identity(user="mallory", uid=3103, gid=3103, groups=(3103, STORM_GID)),
         "storm": Identity(user="storm", uid=STORM_UID, gid=STORM_GID, groups=(STORM_GID,))}
DIRS = StormDirs(supervisor_uid=STORM_UID, launcher_gid=STORM_GID, forbidden_gids=frozenset({STORM_GID}))
TOPO = "wc-1-1700000000"


def storm_config(base: Path, **storm: Any) -> NodeConfig:
    return config_from_mapping({
        "node": {"name": "n1", "local_dir": str(base / "local"), "log_dir": str(base / "log"),
                 "state_dir": str(base / "state"), "min_uid": 1000},
        "images": {"default": "img:1", "allowed": ("img:2",)}, "container": {"mount_cgroup_root": False,
                                                                            "max_memory_mb": 4096},
        "storm": {"plugin": BERTH_PLUGIN, "supervisor_user": "storm", **storm},
    })


def identities(user: str) -> Identity:
    from berth import IdentityError

    if user not in USERS:
        raise IdentityError("user", f"no such user {user!r} on this node")
    return USERS[user]


def storm_node(base: Path, runtime: FakeRuntime) -> Node:
    return Node(storm_config(base), runtime=runtime, host=FOUR_CPUS, identities=identities, dirs=DIRS)


def storm_setup(config: NodeConfig, worker_id: str, topology: str = TOPO, port: int = 6700) -> Path:
    """What ``Container.setup`` leaves, owned by Storm's supervisor; returns the worker's root."""
    local = Path(config.node.local_dir)
    root = local / "workers" / worker_id
    artifacts = Path(config.artifacts_root) / topology / str(port)
    shared = local / "supervisor" / "stormdist" / topology / "shared_by_topology"
    made = []
    for d in (root / "pids", root / "tmp", root / "heartbeats", artifacts, shared, local / "workers-users"):
        p = d
        while not p.exists():
            made.append(p)
            p = p.parent
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
    ufile = local / "workers-users" / worker_id
    ufile.write_text("alice")
    code = shared.parent
    (code / "stormjar.jar").write_text("the topology's code")
    (code / "resources").mkdir(exist_ok=True)
    made += [code / "stormjar.jar", code / "resources"]
    (artifacts / "worker.yaml").write_text("worker-id: x\n")
    os.symlink(artifacts, root / "artifacts")
    for p in [*made, ufile, artifacts / "worker.yaml", root / "artifacts"]:
        os.lchown(p, STORM_UID, STORM_GID)
    for p in made:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return root


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid
