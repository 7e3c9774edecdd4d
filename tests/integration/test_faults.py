"""Faults around the workers: the engine restarted, crashed or unreachable, berth killed mid-launch,
the state dir read-only or full, a container removed behind berth's back.

Every test that stops or kills dockerd does it to the private engine (``private_engine``), never
to the shared one other people's tests run on.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from berth import EngineError, LaunchError, Node, NodeConfig, WorkerNotFound, audit_worker

from ._helpers import WAIT, WAIT_FOR_GO, Exits, go, root_of, snapshot, worker
from .conftest import ROOT, PrivateEngine, config_toml, make_config

pytestmark = pytest.mark.integration

EXIT_WITH_GO = WAIT_FOR_GO + "import sys\nsys.exit(int(open('go').read() or 0))\n"


@pytest.fixture
def fault_config(private_engine: PrivateEngine, base: Path, node_name: str) -> Iterator[NodeConfig]:
    yield private_engine.config(base, node_name)
    if private_engine.run("status").returncode != 0:
        private_engine.start()  # a test that failed while the engine was down must not leave it down
    private_engine.purge(node_name)


@pytest.fixture
def fault_node(fault_config: NodeConfig) -> Iterator[Node]:
    n = Node(fault_config)
    yield n
    n.close()


def _containers(eng: PrivateEngine, node_name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = eng.client().containers(all=True, filters={"label": f"berth.node={node_name}"})
    return found


# -- the engine goes away and comes back ----------------------------------------------------------

@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_no_exit_lost_when_the_engine_restarts_or_crashes(fault_node: Node, private_engine: PrivateEngine,
                                                          how: str) -> None:
    """Moved here from test_docker_node.py, which restarted the shared engine."""
    got = Exits()
    ids = [f"e{i}" for i in range(4)]
    for i, w in enumerate(ids):
        fault_node.launch(worker(w, EXIT_WITH_GO, port=6900 + i, memory_mb=32), on_exit=got)
    go(fault_node, "e0", "20")
    assert got.wait_for(1)[0].exit_code == 20
    if how == "restart":
        private_engine.stop()  # SIGTERM to dockerd and containerd; live-restore keeps the workers
    else:
        private_engine.kill()  # SIGKILL to dockerd only, as a crash would
    for i, w in enumerate(ids[1:], start=1):
        go(fault_node, w, str(20 + i))  # they end while no engine watches them
    private_engine.start()
    recs = got.wait_for(4)
    assert sorted((r.worker_id, r.exit_code, r.signal) for r in recs) == [
        ("e0", 20, None), ("e1", 21, None), ("e2", 22, None), ("e3", 23, None)]
    assert len(recs) == 4  # each exactly once


def test_engine_stopped_under_a_live_node_is_a_clear_error_and_makes_nothing(
        fault_node: Node, private_engine: PrivateEngine) -> None:
    cfg = fault_node.config
    private_engine.stop()
    try:
        with pytest.raises((EngineError, LaunchError)) as info:
            fault_node.launch(worker("w-down", "pass"))
        assert private_engine.socket in str(info.value)
        assert "cannot reach the container engine" in str(info.value)
        assert snapshot(cfg.node.local_dir, cfg.node.log_dir) == {}
    finally:
        private_engine.start()
    assert _containers(private_engine, cfg.node.name) == []


def test_engine_unreachable_is_a_clear_error_naming_it_and_makes_nothing(base: Path, node_name: str,
                                                                         users: dict[str, Any]) -> None:
    nothing = base / "run" / "docker.sock"
    nothing.parent.mkdir()
    subprocess.run(["python3", "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])",
                    str(nothing)], check=True)  # a socket file with nothing listening on it
    cfg = make_config(base, node_name)
    cfg = cfg.model_copy(update={"node": cfg.node.model_copy(update={"docker_host": f"unix://{nothing}"})})
    with pytest.raises((EngineError, LaunchError)) as info:
        Node(cfg).launch(worker("w-unreach", "pass"))
    assert f"unix://{nothing}" in str(info.value)
    assert "cannot reach the container engine" in str(info.value)
    for d in (cfg.node.local_dir, cfg.node.log_dir, cfg.state_dir):
        assert not Path(d).exists(), d


# -- berth killed in the middle of a launch -------------------------------------------------------

MID_LAUNCH = r"""
import os, sys
from berth import WorkerSpec, load_config
from berth._runtimes.docker.runtime import DockerRuntime
from berth import Node

config, when, script = sys.argv[1:4]
original = DockerRuntime.start

def start(self, worker_id):
    if when == "after-start":
        original(self, worker_id)
    os.kill(os.getpid(), 9)  # berth dies here, without a chance to clean up

DockerRuntime.start = start
Node(load_config(config)).launch(WorkerSpec(worker_id="half", topology_id="topo-k", port=6750,
                                            user="berth-alice", command=("python3", "-c", script)))
"""


def _die_mid_launch(config: NodeConfig, base: Path, when: str, script: str) -> None:
    cfg_file = base / "berth.toml"
    cfg_file.write_text(config_toml(config))
    child = subprocess.run([sys.executable, "-c", MID_LAUNCH, str(cfg_file), when, script], cwd=ROOT,
                           capture_output=True, text=True, timeout=WAIT)
    assert child.returncode == -9, child.stderr


def test_berth_killed_between_create_and_start_leaves_no_orphan(fault_config: NodeConfig, base: Path,
                                                                private_engine: PrivateEngine) -> None:
    _die_mid_launch(fault_config, base, "before-start", "pass")
    [left] = _containers(private_engine, fault_config.node.name)
    assert left["State"] == "created"  # the half-made container the crash left
    node = Node(fault_config)
    report = node.recover()
    assert report.removed == ["half"] and report.adopted == [] and report.reported == []
    assert _containers(private_engine, fault_config.node.name) == []
    # the same worker can be launched again, and runs
    node.launch(worker("half", "raise SystemExit(4)", topology_id="topo-k", port=6750), on_exit=lambda r: None)
    assert node.wait("half", WAIT).exit_code == 4
    node.close()


def test_berth_killed_just_after_start_adopts_the_worker(fault_config: NodeConfig, base: Path,
                                                         private_engine: PrivateEngine) -> None:
    _die_mid_launch(fault_config, base, "after-start", EXIT_WITH_GO)
    [left] = _containers(private_engine, fault_config.node.name)
    assert left["State"] == "running"
    got = Exits()
    node = Node(fault_config, on_exit=got)
    report = node.recover()
    assert report.adopted == ["half"] and report.removed == []
    go(node, "half", "6")
    [rec] = got.wait_for(1)
    assert (rec.worker_id, rec.exit_code) == ("half", 6)
    node.close()


# -- the state directory cannot be written ---------------------------------------------------------

@pytest.fixture
def small_state(base: Path) -> Iterator[Path]:
    state = base / "state"
    state.mkdir()
    yield state
    with contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(["umount", str(state)], check=True, capture_output=True)


@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_state_dir_read_only_or_full_is_a_clear_launch_error(fault_config: NodeConfig, small_state: Path,
                                                             private_engine: PrivateEngine, trouble: str) -> None:
    assert Path(fault_config.state_dir) == small_state
    if trouble == "read-only":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "berth-test-state", str(small_state)], check=True)
    else:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "berth-test-state", str(small_state)], check=True)
        (small_state / "exits").mkdir()
        with open(small_state / "filler", "wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
    node = Node(fault_config)
    with pytest.raises(LaunchError) as info:
        node.launch(worker("w-state", "pass"), on_exit=lambda r: None)
    assert info.value.step == "state"
    assert str(small_state) in str(info.value) and "not writable" in str(info.value)
    assert snapshot(fault_config.node.local_dir, fault_config.node.log_dir) == {}
    assert _containers(private_engine, fault_config.node.name) == []
    node.close()


# -- a container removed behind berth's back --------------------------------------------------------

def test_container_removed_behind_berths_back_is_an_exit_then_not_found(fault_node: Node,
                                                                        private_engine: PrivateEngine) -> None:
    got = Exits()
    handle = fault_node.launch(worker("w-gone", WAIT_FOR_GO, memory_mb=48), on_exit=got)
    private_engine.client().remove_container(handle.container_id, force=True)
    [rec] = got.wait_for(1)
    assert (rec.worker_id, rec.exit_code, rec.signal, rec.oom_killed) == ("w-gone", 137, 9, False)
    with pytest.raises(WorkerNotFound):
        fault_node.inspect("w-gone")
    assert fault_node.all_dead("w-gone") is True
    for call in (fault_node.memory_usage, fault_node.force_kill, lambda w: fault_node.kill(w, 1),
                 lambda w: audit_worker(fault_node, w)):
        with pytest.raises(WorkerNotFound):
            call("w-gone")
    fault_node.cleanup("w-gone")  # tidies the directories, no error for the missing container
    assert not root_of(fault_node, "w-gone").exists()
    with pytest.raises(docker.errors.NotFound):
        private_engine.client().inspect_container(handle.container_id)
