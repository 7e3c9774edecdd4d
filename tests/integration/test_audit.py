"""``berth audit`` against a real dockerd: it passes on what berth launches and fails, naming the
check, on containers that lack berth's settings or whose limits were changed behind its back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner

from berth import AuditReport, Node, NodeConfig, WorkerNotFound, audit_all, audit_worker
from berth._cli import main
from berth._cli.demo import DEMO_WORKERS, WORKER
from berth._linux.cgroup import cgroup_dir
from berth._linux.mountinfo import submounts
from berth._storm.loading import load_config

from ._helpers import WAIT, WAIT_FOR_GO, go, root_of, wait_file, worker
from .conftest import ROOT, SOCKET, config_toml

pytestmark = pytest.mark.integration

ALWAYS = {"plan", "running", "caps.effective", "caps.permitted", "caps.bounding", "caps.ambient", "no_new_privs",
          "seccomp", "uid", "gid", "groups", "rootfs.read_only", "mounts.no_other_writable", "memory.limit",
          "memory.swap", "cpu.quota", "cpuset.cpus", "cpuset.mems", "pids.limit", "cgroup.parent", "network",
          "memory.node_max", "pids.node_max", "logs.limit", "main.not_stopped"}
"""The checks every audit of a running worker with a valid plan has, besides one per planned mount."""

SPAWN_CHILD = ("import subprocess, sys\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(1)'])\n"
               "open('ready', 'w').close()\n" + WAIT_FOR_GO + "child.kill()\n")


def _names(report: AuditReport) -> set[str]:
    return {c.name for c in report.checks}


def _failed(report: AuditReport) -> set[str]:
    return {c.name for c in report.failed}


def test_audit_passes_on_every_check_of_a_berth_worker(node: Node) -> None:
    handle = node.launch(worker("w-aud", SPAWN_CHILD, cpu_percent=50, memory_mb=96, cores=(0,), numa_node=0,
                                pids_limit=77), on_exit=lambda r: None)
    wait_file(root_of(node, "w-aud") / "ready", node, "w-aud")
    report = audit_worker(node, "w-aud")
    assert report.ok, "\n".join(c.line() for c in report.failed)
    assert _names(report) == ALWAYS | {f"mount {m.target}" for m in handle.plan.mounts}
    assert len(report.pids) >= 2  # the worker and its child (and the engine's init), every one audited
    assert f"(all {len(report.pids)} processes)" in report.check("caps.bounding").observed
    assert report.check("cpuset.cpus").observed == "0" and report.check("pids.limit").observed == "77"
    assert report.check("cpu.quota").observed.startswith("50%")
    assert report.check("mount /tmp").observed == f"rw {handle.plan.layout.worker_tmp}"
    go(node, "w-aud")
    assert node.wait("w-aud", WAIT).exit_code == 0


@pytest.fixture
def demo_node(engine: str, users: dict[str, Any], base: Path, node_name: str) -> Iterator[Node]:
    """The demo's own config (examples/demo.toml), moved to this test's directories and node name."""
    demo = load_config(ROOT / "examples/demo.toml")
    cfg = demo.model_copy(update={"node": demo.node.model_copy(update={
        "name": node_name, "local_dir": str(base / "local"), "log_dir": str(base / "log"),
        "state_dir": str(base / "state"), "docker_host": SOCKET})})
    n = Node(cfg)
    yield n
    n.close()


def test_audit_passes_on_the_demos_workers(demo_node: Node) -> None:
    ids = []
    for wid, topo, port, user, cpu, mem, cores in DEMO_WORKERS:
        spec = worker(wid, WORKER, user=user, topology_id=topo, port=port, cpu_percent=cpu, memory_mb=mem,
                      cores=cores, env={"WORKER_NAME": wid})
        art = demo_node.plan(spec).layout.artifacts
        demo_node.launch(spec.model_copy(update={"command": ("python3", "-c", WORKER, art, wid)}),
                         on_exit=lambda r: None)
        wait_file(Path(art, "progress.json"), demo_node, wid)
        ids.append(wid)
    reports = audit_all(demo_node)
    assert sorted(r.worker_id for r in reports) == sorted(ids)
    for r in reports:
        assert r.ok, "\n".join(c.line(r.worker_id + " ") for c in r.failed)
    for wid in ids:
        root_of(demo_node, wid).joinpath("stop").touch()
    for wid in ids:
        assert demo_node.wait(wid, WAIT).exit_code == 0


def test_audit_command_prints_a_line_per_check_and_exits_zero(node: Node, config: NodeConfig, base: Path) -> None:
    node.launch(worker("w-cli", WAIT_FOR_GO), on_exit=lambda r: None)
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(config))
    r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "w-cli"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert all(line.startswith("PASS  w-cli ") for line in lines[:-1]), r.output
    assert lines[-1].startswith("w-cli: ") and lines[-1].endswith("all passed")
    assert any(" rootfs.read_only: observed ro " in line for line in lines)
    r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "w-cli", "--json"])
    data = json.loads(r.output)
    assert r.exit_code == 0 and data["ok"] is True and data["worker_id"] == "w-cli"
    assert {c["name"] for c in data["checks"]} >= ALWAYS
    r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "--all", "--json"])
    assert r.exit_code == 0 and [d["worker_id"] for d in json.loads(r.output)] == ["w-cli"]
    r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "w-nope"])
    assert r.exit_code == 125 and r.output.startswith("error: worker_id: ")
    go(node, "w-cli")
    node.wait("w-cli", WAIT)
    r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "w-cli"])
    assert r.exit_code == 1 and "FAIL  w-cli running: observed exited" in r.output


@pytest.fixture
def by_hand(node_name: str) -> Iterator[Any]:
    """Start containers directly on the engine, labelled as this node's, as an operator might."""
    client = docker.APIClient(base_url=SOCKET, version="auto")
    made: list[str] = []

    def run(worker_id: str, labels: dict[str, str], **host: Any) -> str:
        cid: str = client.create_container(
            "berth/python:latest", ["python3", "-c", "import time\nwhile True: time.sleep(1)"],
            labels={"berth.node": node_name, "berth.worker": worker_id, **labels},
            host_config=client.create_host_config(network_mode="host", **host))["Id"]
        made.append(cid)
        client.start(cid)
        return cid

    yield run
    for cid in made:
        client.remove_container(cid, force=True)


def test_audit_fails_on_a_container_started_by_hand(node: Node, config: NodeConfig, base: Path,
                                                    by_hand: Any) -> None:
    labels = {"berth.topology": "topo-h", "berth.port": "6700", "berth.user": "berth-alice"}
    by_hand("w-hand", labels)  # root, writable root fs, the engine's capabilities, no limits, no mounts
    report = audit_worker(node, "w-hand")
    assert not report.ok
    assert report.check("plan").ok  # the request it stands for is a valid one...
    expected_failures = {"caps.effective", "caps.permitted", "caps.bounding", "no_new_privs", "uid", "gid",
                         "groups", "rootfs.read_only", "mounts.no_other_writable", "memory.limit", "memory.swap",
                         "cpu.quota", "pids.limit", "cgroup.parent"}
    assert expected_failures <= _failed(report)  # ...but it gets none of what berth would give it
    assert report.check("uid").observed.endswith(": 0 0 0 0")  # "pid N: 0 0 0 0"
    assert report.check("rootfs.read_only").observed.startswith("rw")
    assert "/etc/hosts" in report.check("mounts.no_other_writable").observed
    assert report.check("mount /tmp").observed == "not mounted"
    assert report.check("seccomp").ok and report.check("network").ok  # the engine's defaults there
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(config))
    r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "w-hand"])
    assert r.exit_code == 1
    for name in expected_failures:
        assert f"FAIL  w-hand {name}: " in r.output
    r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "--all"])
    assert r.exit_code == 1 and "FAIL  w-hand caps.bounding" in r.output


def test_audit_of_a_container_berth_would_refuse_still_checks_the_baseline(node: Node, by_hand: Any) -> None:
    by_hand("w-bare", {}, read_only=True)  # no topology, port or user labels: not a request berth takes
    report = audit_worker(node, "w-bare")
    plan = report.check("plan")
    assert not plan.ok and "topology_id" in plan.observed
    assert report.check("rootfs.read_only").ok  # what it does have is seen...
    assert {"caps.effective", "caps.bounding", "no_new_privs", "uid"} <= _failed(report)  # ...and what it lacks
    assert "never root" in report.check("uid").expected


def test_audit_catches_a_limit_changed_in_the_kernel_behind_berths_back(node: Node) -> None:
    node.launch(worker("w-lim", WAIT_FOR_GO, pids_limit=64, memory_mb=64), on_exit=lambda r: None)
    assert audit_worker(node, "w-lim").ok
    pid = node.inspect("w-lim").pid
    assert pid
    d, _ = cgroup_dir(pid, "pids")
    Path(d, "pids.max").write_text("max")  # the engine still says 64; the kernel no longer does
    report = audit_worker(node, "w-lim")
    assert _failed(report) == {"pids.limit", "pids.node_max"}  # unlimited is above any node maximum too
    assert report.check("pids.limit").observed == "max" and report.check("pids.limit").expected == "64"
    assert report.check("pids.node_max").observed == "unlimited"
    go(node, "w-lim")
    node.wait("w-lim", WAIT)


@pytest.mark.skipif(not submounts("/sys/fs/cgroup"), reason="no cgroup submounts here (a pure cgroup v2 host)")
def test_without_the_recursive_read_only_fix_the_audit_sees_a_writable_cgroupfs(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's own behaviour (ReadOnly applies to the top of a recursive bind only) is caught."""
    import berth._runtimes.docker.runtime

    monkeypatch.setattr(berth._runtimes.docker.runtime, "read_only_all_the_way_down", lambda mounts: mounts)
    node.launch(worker("w-rw-cg", WAIT_FOR_GO), on_exit=lambda r: None)
    report = audit_worker(node, "w-rw-cg")
    assert _failed(report) == {"mounts.no_other_writable"}
    observed = report.check("mounts.no_other_writable").observed
    assert "/sys/fs/cgroup/memory cgroup (writable cgroupfs)" in observed
    go(node, "w-rw-cg")
    node.wait("w-rw-cg", WAIT)


def test_audit_of_an_unknown_worker_is_worker_not_found(node: Node) -> None:
    with pytest.raises(WorkerNotFound):
        audit_worker(node, "w-none")
    assert audit_all(node) == []
