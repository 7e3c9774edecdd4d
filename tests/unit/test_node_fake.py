"""Node logic on the in-memory runtime: launch and rollback, exactly-once exits, recovery.

The same behaviour is shown on the real engine by the integration tests; here each path is
driven deterministically (which call fails, when a worker ends, when the stream reconnects).
Needs root only to give worker directories to the worker's (made-up) uid.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from berth import (
    EngineError,
    Identity,
    LaunchError,
    Node,
    PolicyError,
    WorkerSpec,
    WorkerStatus,
)
from berth._core.config import config_from_mapping
from berth._runtimes.fake import CAPABILITIES
from berth._runtimes.fake.runtime import FakeRuntime

from ..exits import Exits
from .conftest import FOUR_CPUS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to a made-up uid")

ALICE = Identity(user="alice", uid=3101, gid=3101, groups=(3101,))


def spec(worker_id: str = "w1", port: int = 6700) -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, topology_id="topo", port=port, user="alice", command=("run",))


def make_node(base: Path, runtime: FakeRuntime, on_exit: Exits | None = None) -> Node:
    config = config_from_mapping({
        "node": {"name": "n1", "local_dir": str(base / "local"), "log_dir": str(base / "log"),
                 "state_dir": str(base / "state"), "min_uid": 1000},
        "images": {"default": "img:1"}, "container": {"mount_cgroup_root": False},
    })
    return Node(config, runtime=runtime, on_exit=on_exit, host=FOUR_CPUS, identities=lambda user: ALICE)


@pytest.fixture
def fake() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def node(base: Path, fake: FakeRuntime) -> Iterator[Node]:
    n = make_node(base, fake)
    yield n
    n.close()


def test_a_launched_worker_runs_and_its_exit_is_reported_once_with_its_code(node: Node, fake: FakeRuntime) -> None:
    exits = Exits()
    handle = node.launch(spec(), on_exit=exits)
    assert node.inspect("w1").state == WorkerStatus.RUNNING
    assert Path(handle.plan.layout.worker_root).is_dir() and Path(handle.plan.script_path).is_file()
    fake.finish("w1", exit_code=3)
    fake.resubscribe()  # a reconnect reconciles: the same exit must not be reported again
    assert node.wait("w1", timeout=10).exit_code == 3
    [rec] = exits.wait_for(1)
    assert (rec.exit_code, rec.signal, rec.exact) == (3, None, True)
    node.wait("w1", timeout=10)
    assert len(exits.records) == 1


def test_an_exit_while_unsubscribed_is_found_by_the_reconcile(node: Node, fake: FakeRuntime) -> None:
    exits = Exits()
    node.launch(spec(), on_exit=exits)
    fake.finish("w1", signal=9, emit=False)
    fake.resubscribe()
    [rec] = exits.wait_for(1)
    assert (rec.exit_code, rec.signal) == (137, 9)


def test_a_failed_start_removes_the_container_and_every_directory_it_made(node: Node, fake: FakeRuntime,
                                                                          base: Path) -> None:
    cause = EngineError("engine", "start container: no")
    fake.fail_next("start", cause)
    with pytest.raises(LaunchError) as err:
        node.launch(spec())
    assert err.value.step == "start" and err.value.reason == "start container: no"
    assert err.value.__cause__ is cause  # the runtime's error (its field, its own cause) is kept
    assert ("remove", "w1") in fake.calls
    with pytest.raises(Exception, match="no worker 'w1'"):
        node.inspect("w1")
    assert not (base / "local" / "workers" / "w1").exists()
    assert not (base / "local" / "workers-users" / "w1").exists()


def test_a_second_launch_of_an_existing_id_is_refused(node: Node) -> None:
    node.launch(spec())
    with pytest.raises(PolicyError, match="already exists"):
        node.launch(spec())


def test_a_missing_image_is_a_launch_error_before_anything_is_made(node: Node, fake: FakeRuntime,
                                                                    base: Path) -> None:
    fake.missing_images.add("img:1")
    with pytest.raises(LaunchError) as err:
        node.launch(spec())
    assert err.value.step == "image"
    assert not any(op == "create" for op, _ in fake.calls)
    assert not (base / "local" / "workers").exists()


def test_an_unreachable_engine_is_an_engine_error(node: Node, fake: FakeRuntime) -> None:
    fake.down = True
    with pytest.raises(EngineError, match="cannot reach"):
        node.launch(spec())


def test_recover_adopts_runners_reports_exits_once_and_removes_half_made(base: Path, fake: FakeRuntime) -> None:
    first = make_node(base, fake, on_exit=Exits())
    first.launch(spec("run", 6700))
    first.launch(spec("done", 6701))
    first.launch(spec("seen", 6702))
    fake.finish("seen", exit_code=4)
    first.wait("seen", timeout=10)  # reported (and journalled) by the first berth
    first.close()
    fake2 = fake.restarted()  # the same containers, seen by a restarted berth
    fake2.finish("done", exit_code=7, emit=False)
    half = make_node(base, fake2).plan(spec("half", 6703))
    fake2.create(half)
    exits = Exits()
    second = make_node(base, fake2, on_exit=exits)
    report = second.recover()
    assert report.adopted == ["run"] and report.removed == ["half"]
    assert [(r.worker_id, r.exit_code) for r in report.reported] == [("done", 7)]
    fake2.finish("run", exit_code=0)
    got = exits.wait_for(2)
    assert sorted((r.worker_id, r.exit_code) for r in got) == [("done", 7), ("run", 0)]
    second.close()


def test_cleanup_removes_the_container_and_the_worker_dirs_but_keeps_artifacts(node: Node, fake: FakeRuntime,
                                                                              base: Path) -> None:
    handle = node.launch(spec())
    node.cleanup("w1")
    assert ("remove", "w1") in fake.calls
    assert not Path(handle.plan.layout.worker_root).exists()
    assert Path(handle.plan.layout.artifacts).is_dir()


def test_the_node_makes_host_dirs_and_the_cidfile_only_for_a_runtime_that_declares_them(
        base: Path, fake: FakeRuntime) -> None:
    """Capabilities are declared, and Node acts on them: a runtime whose workers run elsewhere
    (host_dirs=False) gets no directories made, none removed, and no container.cid."""
    fake.capabilities = replace(CAPABILITIES, cidfile=False)
    with make_node(base, fake) as node:
        handle = node.launch(spec("local", 6700))
        assert Path(handle.plan.layout.worker_root).is_dir()
        assert not Path(handle.plan.cid_file).exists()
    remote = FakeRuntime()
    remote.capabilities = replace(CAPABILITIES, host_dirs=False, cidfile=False)
    with make_node(base, remote) as node:
        handle = node.launch(spec("remote", 6701))
        root = Path(handle.plan.layout.worker_root)
        assert node.inspect("remote").state == WorkerStatus.RUNNING and not root.exists()
        root.mkdir(parents=True)  # what the runtime itself keeps there is not the node's to remove
        node.cleanup("remote")
        assert ("remove", "remote") in remote.calls and root.is_dir()


def test_a_launch_error_keeps_a_permanent_cause_so_the_supervisor_stops_retrying(node: Node, fake: FakeRuntime) -> None:
    """The supervisor rejects (instead of retrying forever) a launch whose cause no retry can fix,
    e.g. the runc runtime's ConfigError for an image it has no directory for."""
    from berth import ConfigError
    from berth._service.decisions import permanent

    fake.fail_next("create", ConfigError("runc.images", "no root filesystem for img:1"))
    with pytest.raises(LaunchError) as err:
        node.launch(spec())
    assert permanent(err.value)
    fake.fail_next("create", EngineError("engine", "create container: engine restarting"))
    with pytest.raises(LaunchError) as err:
        node.launch(spec())
    assert not permanent(err.value)


def test_two_threads_launching_one_id_one_wins(node: Node, fake: FakeRuntime) -> None:
    """The per-id claim covers threads of one berth as it covers processes."""
    inside, release = threading.Event(), threading.Event()
    real_create = fake.create

    def slow_create(plan: Any) -> str:
        inside.set()
        release.wait(10)
        return real_create(plan)

    fake.create = slow_create  # type: ignore[method-assign]
    first = threading.Thread(target=node.launch, args=(spec(),))
    first.start()
    assert inside.wait(10)
    with pytest.raises(PolicyError, match="already under way"):
        node.launch(spec())
    release.set()
    first.join(10)
    assert node.inspect("w1").state == WorkerStatus.RUNNING
