"""The process runtime (development only): same Node API, no isolation, no thread per worker."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from berth import EngineError, Node, WorkerSpec
from berth._core.config import config_from_mapping
from berth._runtimes.process.runtime import ProcessRuntime


def _config(base: Path, runtime: str = "process") -> Any:
    return config_from_mapping({"node": {"name": "proc", "runtime": runtime, "local_dir": str(base / "local"),
                                         "log_dir": str(base / "log"), "state_dir": str(base / "state")},
                                "images": {"default": "none/none"},
                                "container": {"mount_cgroup_root": False}})


def test_refused_unless_the_config_names_it(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no isolation"):
        ProcessRuntime(_config(tmp_path, runtime="docker"))


def test_exit_codes_signals_and_identity(base: Path, users: dict[str, Any]) -> None:
    node = Node(_config(base))
    try:
        spec = WorkerSpec(worker_id="p1", topology_id="tt", port=1, user="berth-bob",
                          command=("sh", "-c", "id -u > uid; exit 3"))
        node.launch(spec, on_exit=lambda r: None)
        rec = node.wait("p1", 60)
        assert (rec.exit_code, rec.signal) == (3, None)
        assert Path(base, "local", "workers", "p1", "uid").read_text().strip() == "2102"
        threads = threading.active_count()
        node.launch(WorkerSpec(worker_id="p2", topology_id="tt", port=2, user="berth-bob",
                               command=("sleep", "600")), on_exit=lambda r: None)
        assert threading.active_count() == threads
        assert node.memory_usage("p2") > 0
        node.force_kill("p2")
        assert node.wait("p2", 60).signal == 9
    finally:
        node.close()
