"""A node configured by a storm.yaml, against the real engine: Storm's semantics where Storm has
them (CPU override, NUMA by port, artifacts dir, Storm's script), berth's hardening whatever the
file says (memory = swap limit although storm.cgroup.memory.enforcement.enable is false, pids, init)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest

from berth import Node, NodeConfig
from berth._storm.yaml import config_from_storm

from ._helpers import WAIT, worker
from .conftest import PY_IMAGE, SOCKET

pytestmark = pytest.mark.integration


def storm_config(base: Path, node_name: str) -> NodeConfig:
    for d in ("home", "nscd", "log"):
        (base / d).mkdir()
    config = config_from_storm({
        "storm.home": str(base / "home"), "storm.local.dir": str(base / "local") + "/",
        "storm.log.dir": str(base / "log"), "storm.local.hostname": node_name,
        "storm.resource.isolation.plugin.enable": True,
        "storm.resource.isolation.plugin": "org.apache.storm.container.docker.DockerManager",
        "storm.oci.image": PY_IMAGE, "storm.oci.allowed.images": PY_IMAGE,
        "storm.oci.cgroup.parent": "berth-test", "storm.oci.nscd.dir": str(base / "nscd"),
        "storm.worker.cgroup.cpu.limit": 50, "storm.workers.artifacts.dir": "arts",
        "supervisor.numa.meta": {"0": {"numa.cores": [0], "numa.memory.mb": 1024, "numa.ports": [6703]}},
    }, env={})
    # Storm has no state dir key: the test's own, not the machine's default (bound to one node).
    return config.model_copy(update={"node": config.node.model_copy(update={"docker_host": SOCKET,
                                                                            "state_dir": str(base / "state")})})


def test_a_storm_yaml_node_launches_with_storms_semantics_and_berths_hardening(
        engine: str, users: dict[str, Any], base: Path, node_name: str) -> None:
    node = Node(storm_config(base, node_name))
    try:
        spec = worker("w-storm", "import os; open(os.environ['OUT'], 'w').write('ok')", port=6703,
                      topology_id="wc-1", cpu_percent=150, memory_mb=96, env={"OUT": "out.txt", "A": "1"})
        node.launch(spec, on_exit=lambda r: None)
        rec = node.wait("w-storm", WAIT)
        assert rec.exit_code == 0  # bash ran Storm's script (no newline after its exec line)
        root = base / "local" / "workers" / "w-storm"
        assert (root / "out.txt").read_text() == "ok"
        host = docker.APIClient(base_url=SOCKET, version="auto").inspect_container("w-storm")["HostConfig"]
        assert host["NanoCpus"] == 500_000_000          # storm.worker.cgroup.cpu.limit 50 replaced 150
        assert host["Memory"] == host["MemorySwap"] == 96 * 2**20  # limited, though Storm's line has no --memory
        assert host["CpusetCpus"] == "0" and host["CpusetMems"] == "0"  # port 6703 is in zone 0
        assert host["Init"] is True and host["PidsLimit"] and host["CgroupParent"] == "/berth-test"
        artifacts = base / "log" / "arts" / "wc-1" / "6703"
        assert artifacts.is_dir()
        assert any(m["Source"] == str(artifacts) for m in host["Mounts"])
        assert (root / "storm-worker-script.sh").read_bytes().endswith(b";")
    finally:
        node.close()
