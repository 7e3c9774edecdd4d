"""Storm's directory layout under the node's local and log dirs, as pure functions of the config.

Keeping Storm's names means a node can be switched between Storm and berth without moving
anything, and the mounts a worker sees are where a Storm worker expects them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import NodeConfig

SCRIPT_NAME = "storm-worker-script.sh"
CID_NAME = "container.cid"


@dataclass(frozen=True)
class Layout:
    """Every host path one worker touches."""

    worker_root: str
    worker_tmp: str
    user_file: str
    supervisor_dir: str
    shared_by_topology: str
    artifacts: str
    cid_file: str
    script: str


def supervisor_dir(config: NodeConfig) -> str:
    return os.path.join(config.node.local_dir, "supervisor")


def worker_root(config: NodeConfig, worker_id: str) -> str:
    return os.path.join(config.node.local_dir, "workers", worker_id)


def user_file(config: NodeConfig, worker_id: str) -> str:
    return os.path.join(config.node.local_dir, "workers-users", worker_id)


def layout(config: NodeConfig, worker_id: str, topology_id: str, port: int) -> Layout:
    root = worker_root(config, worker_id)
    sup = supervisor_dir(config)
    return Layout(
        worker_root=root,
        worker_tmp=os.path.join(root, "tmp"),
        user_file=user_file(config, worker_id),
        supervisor_dir=sup,
        shared_by_topology=os.path.join(sup, "stormdist", topology_id, "shared_by_topology"),
        artifacts=os.path.join(config.artifacts_root, topology_id, str(port)),
        cid_file=os.path.join(root, CID_NAME),
        script=os.path.join(root, SCRIPT_NAME),
    )
