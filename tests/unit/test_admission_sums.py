"""Issue 18 item 5: the node's resources are not promised twice over.

Reproduced on main: two workers of 60% of the host's RAM each were both accepted; two workers
held 8192 of 32768 pids, so 8 of the 256 allowed workers reached ``pid_max``. Now the sum of
the admitted workers' memory, cpu and pids stays within the node's capacity (``[capacity]``, with
defaults below the machine's figures, or Storm's ``supervisor.memory.capacity.mb`` and
``supervisor.cpu.capacity``); a worker past it is refused naming the field and the capacity,
and the running ones are untouched.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from berth import CapacityError, ConfigError, HostFacts, Identity, Node, PolicyError, WorkerSpec
from berth._core.config import config_from_mapping
from berth._core.limits import NodeCapacity, Usage, check_admission, node_capacity
from berth._core.plan import Plan
from berth._runtimes.fake.runtime import FakeRuntime
from berth._storm.yaml import config_from_storm

RAM = 10000
HOST = HostFacts(cpus=frozenset({0, 1, 2, 3}), mems=frozenset({0}), memory_mb=RAM, pid_max=32768,
                 threads_max=200000)
ALICE = Identity(user="alice", uid=3101, gid=3101, groups=(3101,))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to a made-up uid")


def _config(base: Path | None = None, capacity: dict[str, Any] | None = None, **extra: Any) -> Any:
    where = base or Path("/srv/n1")
    return config_from_mapping({
        "node": {"name": "n1", "local_dir": str(where / "local"), "log_dir": str(where / "log"),
                 "state_dir": str(where / "state"), "min_uid": 1000},
        "images": {"default": "img:1"}, "container": {"mount_cgroup_root": False},
        "capacity": capacity or {}, **extra})


# -- the node's capacity: config keys with safe defaults --------------------------------------------

def test_defaults_are_below_the_machines_figures() -> None:
    cap = node_capacity(_config(), HOST)
    assert (cap.memory_mb, cap.cpu_percent, cap.pids) == (RAM - 1024, 400, 24576)  # RAM less max(10 %, 1 GiB)
    few_threads = HostFacts(cpus=HOST.cpus, mems=HOST.mems, memory_mb=RAM, pid_max=32768, threads_max=8000)
    assert node_capacity(_config(), few_threads).pids == 6000  # three quarters of the smaller pool
    unknown = HostFacts(cpus=frozenset({0, 1}), mems=frozenset({0}))
    assert node_capacity(_config(), unknown) == NodeCapacity(memory_mb=None, cpu_percent=200, pids=None)


def test_configured_figures_are_taken_as_given() -> None:
    """Limits are maxima, not what workers use: an operator may promise more than the machine has
    on purpose (an overcommit); only the defaults are bound to stay below the machine's figures."""
    cap = node_capacity(_config(capacity={"memory_mb": 4096, "cpu_percent": 800, "pids": 5000}), HOST)
    assert (cap.memory_mb, cap.cpu_percent, cap.pids) == (4096, 800, 5000)
    cap = node_capacity(_config(capacity={"memory_mb": 4 * RAM, "pids": 40000}), HOST)
    assert (cap.memory_mb, cap.pids) == (4 * RAM, 40000)
    with pytest.raises(ConfigError) as info:
        _config(capacity={"pids": 0})
    assert info.value.field == "capacity.pids"


def test_the_cluster_offer_and_the_capacity_are_one_figure() -> None:
    cap = node_capacity(_config(cluster={"memory_mb": 3000, "cpu_percent": 300}), HOST)
    assert (cap.memory_mb, cap.cpu_percent) == (3000, 300)
    with pytest.raises(ConfigError) as info:
        _config(capacity={"memory_mb": 2000}, cluster={"memory_mb": 3000})
    assert info.value.field == "capacity"
    assert "capacity.memory_mb (2000) and cluster.memory_mb (3000) are one figure" in info.value.reason


def test_storm_keys_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Storm's supervisor.memory.capacity.mb (4096.0) and supervisor.cpu.capacity (400.0), from
    conf/defaults.yaml; a worker's memory as Storm passes it carries
    storm.supervisor.memory.limit.tolerance.margin.mb (128.0), which the capacity leaves out."""
    home = tmp_path / "storm"
    home.mkdir()
    env = {"STORM_HOME": str(home)}
    base = {"storm.local.dir": str(tmp_path / "local"), "storm.log.dir": str(tmp_path / "logs"),
            "storm.oci.image": "storm/worker:2", "storm.oci.allowed.images": ["storm/worker:2"]}
    cap = node_capacity(config_from_storm(base, env), HOST)
    assert (cap.memory_mb, cap.cpu_percent, cap.memory_margin_mb) == (4096, 400, 128)
    two_cores = HostFacts(cpus=frozenset({0, 1}), mems=HOST.mems, memory_mb=3000, pid_max=32768)
    cap = node_capacity(config_from_storm(base, env), two_cores)
    assert (cap.memory_mb, cap.cpu_percent) == (3000 - 1024, 200)  # Storm's default, never above the machine's
    conf = config_from_storm({**base, "supervisor.memory.capacity.mb": 2048.5, "supervisor.cpu.capacity": 150.0,
                              "storm.supervisor.memory.limit.tolerance.margin.mb": 64.2}, env)
    cap = node_capacity(conf, HOST)
    assert (cap.memory_mb, cap.cpu_percent, cap.memory_margin_mb) == (2048, 150, 65)
    assert node_capacity(config_from_storm({**base, "supervisor.memory.capacity.mb": 20000}, env), HOST).keys == (
        "supervisor.memory.capacity.mb", "supervisor.cpu.capacity", "capacity.pids")
    with pytest.raises(ConfigError) as info:
        config_from_storm({**base, "supervisor.cpu.capacity": "lots"}, env)
    assert info.value.field == "supervisor.cpu.capacity"


# -- the check, pure --------------------------------------------------------------------------------

CAP = NodeCapacity(memory_mb=8976, cpu_percent=400, pids=24576)


def test_what_fits_and_what_does_not_names_the_field_and_the_capacity() -> None:
    held = Usage(memory_mb=6000, cpu_percent=100, pids=1024, workers=1)
    check_admission(Usage(memory_mb=2976, cpu_percent=300, pids=1024, workers=1), held, CAP)  # exactly full
    with pytest.raises(CapacityError) as info:
        check_admission(Usage(memory_mb=6000, cpu_percent=100, pids=1024, workers=1), held, CAP)
    assert (info.value.field, info.value.reason) == (
        "memory_mb", "6000 MiB more would exceed the node's capacity of 8976 MiB (capacity.memory_mb): "
                     "its 1 worker(s) hold 6000 MiB")
    with pytest.raises(CapacityError) as info:
        check_admission(Usage(memory_mb=1, cpu_percent=301, pids=1, workers=1), held, CAP)
    assert info.value.field == "cpu_percent" and "capacity of 400% (capacity.cpu_percent)" in info.value.reason
    with pytest.raises(CapacityError) as info:
        check_admission(Usage(memory_mb=1, cpu_percent=1, pids=4096, workers=1),
                        Usage(memory_mb=1, cpu_percent=1, pids=24576, workers=6), CAP)
    assert (info.value.field, info.value.reason) == (
        "pids_limit", "4096 more would exceed the node's capacity of 24576 pids (capacity.pids): its 6 "
                      "worker(s) hold 24576")


def test_a_worker_larger_than_the_whole_node_can_never_run_here() -> None:
    with pytest.raises(PolicyError) as info:  # not a wait for capacity: a rejection
        check_admission(Usage(memory_mb=9000, cpu_percent=1, pids=1, workers=1), Usage(), CAP)
    assert (info.value.field, info.value.reason) == (
        "memory_mb", "9000 MiB is above the node's capacity of 8976 MiB (capacity.memory_mb): it can never run here")


def test_storm_s_margin_is_left_out_of_the_sum() -> None:
    cap = NodeCapacity(memory_mb=4096, cpu_percent=400, pids=None, memory_margin_mb=128)
    four = Usage.of(memory_mb=1024 + 128, cpu_percent=100, pids=1024, margin=128)
    assert four.memory_mb == 1024
    held = Usage()
    for _ in range(4):  # what Nimbus places on a 4096 MiB supervisor: four workers of 1024 MiB
        check_admission(four, held, cap)
        held = held + four
    with pytest.raises(CapacityError) as info:
        check_admission(four, held, cap)
    assert info.value.reason.endswith("(each worker counted without Storm's 128 MiB tolerance margin, "
                                      "storm.supervisor.memory.limit.tolerance.margin.mb)")


# -- the node: what runs on it, whoever launched it ---------------------------------------------------

def _node(base: Path, fake: FakeRuntime, capacity: dict[str, Any] | None = None) -> Node:
    return Node(_config(base, capacity), runtime=fake, host=HOST, identities=lambda user: ALICE)


def _spec(wid: str, port: int, **kw: Any) -> WorkerSpec:
    return WorkerSpec(worker_id=wid, topology_id="topo", port=port, user="alice", command=("run",), **kw)


@needs_root
def test_two_workers_of_60_percent_of_ram_are_not_both_admitted(base: Path) -> None:
    """The reproduction, through Node.launch (berth launch, and the Storm plugin's launches)."""
    fake = FakeRuntime()
    node = _node(base, fake)
    node.launch(_spec("w1", 6700, memory_mb=6000))
    with pytest.raises(CapacityError) as info:
        node.launch(_spec("w2", 6701, memory_mb=6000))
    assert info.value.field == "memory_mb" and "capacity of 8976 MiB" in info.value.reason
    assert [op for op, wid in fake.calls if wid == "w2"] == []  # nothing of w2 was made
    assert fake.inspect("w1").running  # the running one untouched


@needs_root
def test_pids_are_counted_too(base: Path) -> None:
    fake = FakeRuntime()
    node = _node(base, fake)
    for i in range(6):
        node.launch(_spec(f"p{i}", 6700 + i, pids_limit=4096, memory_mb=64, cpu_percent=10))
    with pytest.raises(CapacityError) as info:
        node.launch(_spec("p6", 6706, pids_limit=4096, memory_mb=64, cpu_percent=10))
    assert info.value.field == "pids_limit"


@needs_root
def test_what_runs_is_counted_whoever_launched_it(base: Path) -> None:
    """Another berth process (another Node on the same engine and state dir) launched w1; an
    exited worker holds nothing."""
    fake = FakeRuntime()
    _node(base, fake).launch(_spec("w1", 6700, memory_mb=6000))
    other = _node(base, fake.restarted())
    with pytest.raises(CapacityError):
        other.launch(_spec("w2", 6701, memory_mb=6000))
    fake.finish("w1", exit_code=0)
    other.launch(_spec("w2", 6701, memory_mb=6000))
    assert other.usage() == Usage(memory_mb=6000, cpu_percent=100, pids=1024, workers=1)
    assert other.usage(held={"w1"}) == Usage(memory_mb=12000, cpu_percent=200, pids=2048, workers=2)


@needs_root
def test_two_concurrent_launches_do_not_both_fit_the_last_slot(base: Path) -> None:
    """The first launch has passed admission and is still creating its container (so the engine
    lists nothing yet): its claim in the state dir says what it takes."""
    fake = FakeRuntime()
    gate = fake.hold_creates("w1")
    first = _node(base, fake)
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            first.launch(_spec("w1", 6700, memory_mb=6000))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=launch)
    t.start()
    assert gate.entered.wait(20)
    second = _node(base, fake.restarted())
    with pytest.raises(CapacityError) as info:
        second.launch(_spec("w2", 6701, memory_mb=6000))
    assert "its 1 worker(s) hold 6000 MiB" in info.value.reason
    gate.set()
    t.join(20)
    assert not errors and fake.inspect("w1").running


@needs_root
def test_a_worker_that_can_never_fit_is_refused_when_planned(base: Path) -> None:
    node = _node(base, FakeRuntime(), capacity={"memory_mb": 2048})
    with pytest.raises(PolicyError) as info:
        node.plan(_spec("w1", 6700, memory_mb=4096))
    assert "above the node's capacity of 2048 MiB" in info.value.reason
    assert isinstance(node.plan(_spec("w1", 6700, memory_mb=2048)), Plan)


def test_the_cluster_registration_offers_the_same_figures() -> None:
    from berth._cluster.capacity import node_capacity as offer

    for config in (_config(), _config(capacity={"memory_mb": 3000, "cpu_percent": 300}),
                   _config(cluster={"memory_mb": 2500})):
        cap, offered = node_capacity(config, HOST), offer(config, HOST)
        assert (offered.memory_mb, offered.cpu_percent) == (cap.memory_mb, cap.cpu_percent)
    big = HostFacts(cpus=HOST.cpus, mems=HOST.mems, memory_mb=20000, pid_max=32768)
    assert offer(_config(), big).memory_mb == 18000  # a tenth kept, as admission keeps (was RAM less 1 GiB)


@needs_root
def test_a_full_state_dir_is_a_launch_error_and_leaves_nothing(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The note of a launch cannot be written (ENOSPC): one typed error naming the step, no
    container, no note left behind; the next launch works once there is room again."""
    import errno

    from berth import LaunchError

    fake = FakeRuntime()
    node = _node(base, fake)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)  # node.json and the note are written with os.write: the disk is full
    with pytest.raises(LaunchError) as info:
        node.launch(_spec("w1", 6700))
    assert info.value.step == "state" and info.value.reason.endswith("No space left on device (writing node.json)")
    monkeypatch.undo()
    node.bind_state()
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(LaunchError) as info:
        node.launch(_spec("w1", 6700))
    monkeypatch.undo()
    assert info.value.step == "state" and "No space left on device" in info.value.reason
    assert [op for op, _ in fake.calls if op == "create"] == []
    assert not list((base / "state" / "claims").glob("*.note"))
    node.launch(_spec("w1", 6700))
    assert fake.inspect("w1").running


@needs_root
def test_a_process_reuses_its_listing_only_while_no_other_admitted_anything(base: Path) -> None:
    """A burst of launches lists the runtime once; another process's admission, or a refusal on the
    reused listing (it can count a worker that ended since), makes the next one list again."""
    fake = FakeRuntime()
    a, b = _node(base, fake), _node(base, fake.restarted())

    def listings() -> int:
        return sum(op == "list_workers" for op, _ in fake.calls)

    for i in range(4):
        a.launch(_spec(f"a{i}", 6700 + i, memory_mb=1000, cpu_percent=10))
    assert listings() == 1
    b.launch(_spec("b0", 6710, memory_mb=4000, cpu_percent=10))  # another process: its own listing
    assert listings() == 1  # (b's runtime object shares the engine, not the call log)
    with pytest.raises(CapacityError):  # a's listing would miss b0: it lists again and counts it
        a.launch(_spec("a4", 6704, memory_mb=1000, cpu_percent=10))
    assert listings() == 2
    fake.finish("b0")  # ended: a's listing (made just now) still says it runs
    a.launch(_spec("a4", 6704, memory_mb=1000, cpu_percent=10))  # refused on it, then fits on a fresh one
    assert listings() == 3 and fake.inspect("a4").running


def test_labels_decode_the_same_way_for_every_reader() -> None:
    """One decoder for berth's labels: a value that is not a plain number (a negative memory label on a
    container made by hand would have lowered what the node's workers hold) reads as absent."""
    from berth._core.labels import WorkerLabels

    good = WorkerLabels.decode({"berth.worker": "w1", "berth.topology": "t", "berth.port": "6700",
                                "berth.user": "alice", "berth.spec": "d1", "berth.owner": "/s",
                                "berth.memory_mb": "64", "berth.cpu_percent": "50", "berth.pids_limit": "9"})
    assert (good.worker_id, good.topology_id, good.port, good.user, good.spec_digest, good.owner) == \
        ("w1", "t", 6700, "alice", "d1", "/s")
    assert (good.memory_mb, good.cpu_percent, good.pids_limit) == (64, 50, 9)
    bad = WorkerLabels.decode({"berth.port": "99999", "berth.memory_mb": "-100000", "berth.cpu_percent": "1e3"})
    assert (bad.worker_id, bad.port, bad.memory_mb, bad.cpu_percent, bad.pids_limit) == ("", 0, None, None, None)
    assert bad.request() == {"port": 99999}  # the audit re-plans what was written, and refuses it
    assert WorkerLabels.decode({"berth.port": "x1"}).request() == {"port": "x1"}
