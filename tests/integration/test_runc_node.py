"""The runc runtime's own promises: images never written, audit as for docker (and failing on a
container started by hand), ps words, recovery after berth is SIGKILLed, the shim commands."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from berth import LaunchError, Node, NodeConfig, audit_worker
from berth._cli import main
from berth._runtimes.runc.bundle import mount_overlay

from ._helpers import WAIT, WAIT_FOR_GO, Exits, go, release, root_of, wait_file
from ._helpers import worker as spec
from .conftest import BB_IMAGE, ROOT, RUNC_IMAGES, config_toml, poll_until
from .test_audit import ALWAYS

pytestmark = pytest.mark.integration
READY_THEN_GO = "open('ready', 'w').close()\n" + WAIT_FOR_GO + "import sys\nsys.exit(int(open('go').read() or 0))\n"


def _tree(top: str) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``top`` with mode, owner, group and content hash (a link: its target)."""
    out = {}
    for here, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            p = os.path.join(here, name)
            st = os.lstat(p)
            if os.path.islink(p):
                digest = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            else:
                digest = ""
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


def test_twenty_launches_never_write_into_the_image(runc_config: NodeConfig) -> None:
    image = RUNC_IMAGES[BB_IMAGE]
    before = _tree(image)
    node = Node(runc_config.model_copy(update={"container": runc_config.container.model_copy(
        update={"shell": "sh"})}))  # busybox has no bash
    got = Exits()
    attempt = "for f in /etc/passwd /bin/sh /new; do echo x >> $f; done 2>/dev/null; exit 0"
    for i in range(20):
        node.launch(spec(f"w-img{i}", "", image=BB_IMAGE).model_copy(
            update={"command": ("sh", "-c", attempt)}), on_exit=got)
    assert [r.exit_code for r in got.wait_for(20)] == [0] * 20
    for i in range(20):
        node.cleanup(f"w-img{i}")
    node.close()
    assert _tree(image) == before


def test_audit_passes_on_a_runc_worker_with_the_same_checks_as_docker(runc_node: Node) -> None:
    handle = runc_node.launch(spec("w-aud", READY_THEN_GO, cpu_percent=50, memory_mb=96, cores=(0,), pids_limit=77),
                              on_exit=lambda r: None)
    wait_file(root_of(runc_node, "w-aud") / "ready", runc_node, "w-aud")
    report = audit_worker(runc_node, "w-aud")
    assert report.ok, "\n".join(c.line() for c in report.failed)
    assert {c.name for c in report.checks} == ALWAYS | {f"mount {m.target}" for m in handle.plan.mounts}
    assert report.check("seccomp").observed == "2 (filter)"
    assert report.check("pids.limit").observed == "77" and report.check("cpuset.cpus").observed == "0"
    assert report.check("memory.limit").observed.startswith(str(96 * 2**20))
    go(runc_node, "w-aud", "0")
    runc_node.wait("w-aud", WAIT)


def test_audit_fails_on_a_runc_container_started_by_hand(runc_node: Node, runc_config: NodeConfig,
                                                         base: Path) -> None:
    bundle = base / "by-hand"
    for d in ("rootfs", "upper", "work"):
        (bundle / d).mkdir(parents=True)
    mount_overlay(RUNC_IMAGES[BB_IMAGE], str(bundle / "upper"), str(bundle / "work"), str(bundle / "rootfs"))
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "hostname": "hand",
              "annotations": {"berth.node": runc_config.node.name, "berth.worker": "w-hand", "berth.topology": "topo-h",
                              "berth.port": "6700", "berth.user": "berth-alice", "berth.image": BB_IMAGE},
              "process": {"args": ["sh", "-c", "sleep 600"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                          "env": ["PATH=/bin"], "capabilities": {k: ["CAP_CHOWN", "CAP_KILL"] for k in
                                                                 ("bounding", "effective", "permitted")}},
              "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                         {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]}],
              "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts")],
                        "cgroupsPath": f"/berth-hand-{runc_config.node.name}/w-hand"}}
    (bundle / "config.json").write_text(json.dumps(config))
    root = Path(runc_config.runtime_dir("runc"), "root")
    root.mkdir(parents=True, exist_ok=True)
    try:
        with open(base / "hand.err", "w") as err:  # not a pipe: the container would hold it open
            made = subprocess.run(["runc", "--root", str(root), "run", "-d", "--bundle", str(bundle), "hand1"],
                                  stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        assert made.returncode == 0, (base / "hand.err").read_text()
        report = audit_worker(runc_node, "w-hand")
        failed = {c.name for c in report.failed}
        assert report.check("plan").ok  # a valid request, but none of berth's settings:
        assert {"caps.effective", "caps.bounding", "no_new_privs", "seccomp", "uid", "rootfs.read_only",
                "memory.limit", "pids.limit", "cgroup.parent", "logs.limit"} <= failed
        assert report.check("seccomp").observed.endswith(": 0 (disabled)")
        cfg = base / "berth.toml"
        cfg.write_text(config_toml(runc_config))
        r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "w-hand"])
        assert r.exit_code == 1 and "FAIL  w-hand seccomp" in r.output
    finally:
        subprocess.run(["runc", "--root", str(root), "delete", "--force", "hand1"], capture_output=True)
        subprocess.run(["umount", str(bundle / "rootfs")], capture_output=True)
        for parent in Path("/sys/fs/cgroup").glob(f"*/berth-hand-{runc_config.node.name}"):
            parent.rmdir()  # runc removed the container's cgroup, not the parent this test named


def test_ps_tells_exit_137_from_sigkill_and_from_oom(runc_node: Node, runc_config: NodeConfig, base: Path) -> None:
    got = Exits()
    runc_node.launch(spec("p-137", "raise SystemExit(137)"), on_exit=got)
    runc_node.launch(spec("p-kill", READY_THEN_GO), on_exit=got)
    runc_node.launch(spec("p-oom", "b = []\nwhile True: b.append(bytearray(8 << 20))\n", memory_mb=48), on_exit=got)
    wait_file(root_of(runc_node, "p-kill") / "ready", runc_node, "p-kill")
    runc_node.force_kill("p-kill")
    got.wait_for(3)
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(runc_config))
    r = CliRunner().invoke(main, ["--config", str(cfg), "ps", "--json"])
    rows = {row["worker_id"]: row for row in json.loads(r.output)}
    assert (rows["p-137"]["how"], rows["p-137"]["signal"], rows["p-137"]["exact"]) == ("exited 137", None, True)
    assert (rows["p-kill"]["how"], rows["p-kill"]["signal"]) == ("killed by SIGKILL", 9)
    assert rows["p-oom"]["how"] == "killed by SIGKILL, out of memory" and rows["p-oom"]["oom_killed"]
    assert {rows[w]["exit_code"] for w in rows} == {137}  # the same code; the words differ
    r = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["--config", str(cfg), "ps"])
    assert "exited 137" in r.output and "killed by SIGKILL" in r.output and "out of memory" in r.output


RECOVER_CHILD = r"""
import sys
from berth._storm.loading import load_config
from berth import Node, WorkerSpec
node = Node(load_config(sys.argv[1]))
script = "import os,time,sys\nwhile not os.path.exists('go'): time.sleep(0.02)\nsys.exit(int(open('go').read() or 0))\n"
for i in range(6):
    node.launch(WorkerSpec(worker_id=f"r{i}", topology_id="topo-r", port=6800 + i, user="berth-bob",
                           command=("python3", "-c", script), memory_mb=32), on_exit=lambda r: None)
print("launched", flush=True)
sys.stdin.read()
"""


def test_recover_after_berth_is_sigkilled_reports_each_exit_once_and_exactly(runc_config: NodeConfig,
                                                                             base: Path) -> None:
    cfg_file = base / "berth.toml"
    cfg_file.write_text(config_toml(runc_config))
    child = subprocess.Popen([sys.executable, "-c", RECOVER_CHILD, str(cfg_file)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdout is not None and child.stdout.readline().strip() == "launched"
    child.kill()  # berth dies without any cleanup; the shim and the workers do not
    child.wait()
    observer = Node(runc_config)
    for i in range(3):
        release(Path(runc_config.node.local_dir, "workers", f"r{i}"), str(10 + i))
    for i in range(3):
        poll_until(lambda i=i: observer.inspect(f"r{i}").state == "exited", f"r{i} exited")  # type: ignore[misc]
    got = Exits()
    fresh = Node(runc_config, on_exit=got)
    report = fresh.recover()
    assert sorted((r.worker_id, r.exit_code, r.exact) for r in report.reported) == [
        ("r0", 10, True), ("r1", 11, True), ("r2", 12, True)]
    assert sorted(report.adopted) == [f"r{i}" for i in range(3, 6)]
    go(fresh, "r4", "7")
    recs = got.wait_for(4)
    assert sorted((r.worker_id, r.exit_code) for r in recs) == [("r0", 10), ("r1", 11), ("r2", 12), ("r4", 7)]
    with Node(runc_config) as third:
        assert third.recover().reported == []
    fresh.close()


def test_shim_commands(runc_config: NodeConfig, base: Path, users: dict[str, Any]) -> None:
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(runc_config))

    def run(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(main, ["--config", str(cfg), "shim", *args])
        return r.exit_code, r.output

    assert run("status")[0] == 1
    code, out = run("start")
    assert code == 0 and out.startswith("berth-shim running, pid ")
    pid = int(out.split("pid ")[1].split()[0])
    code, out = run("status")
    assert code == 0 and f"pid {pid}" in out and "containers 0" in out and "threads 1" in out
    node = Node(runc_config)
    node.launch(spec("s-1", READY_THEN_GO), on_exit=lambda r: None)
    wait_file(root_of(node, "s-1") / "ready", node, "s-1")
    code, out = run("stop")
    assert code == 125 and "1 containers are running" in out  # refused: its status would be lost
    go(node, "s-1", "0")
    node.wait("s-1", WAIT)
    node.close()
    assert run("stop")[0] == 0
    poll_until(lambda: not Path(f"/proc/{pid}").exists(), "the shim to exit")


def test_an_image_without_a_directory_is_refused_and_leaves_nothing(runc_config: NodeConfig) -> None:
    node = Node(runc_config.model_copy(update={"images": runc_config.images.model_copy(update={"allowed": ("*",)})}))
    with pytest.raises(LaunchError) as err:
        node.launch(spec("w-noimg", "pass", image="berth/nope:latest"), on_exit=lambda r: None)
    assert err.value.step == "image" and "berth never pulls" in err.value.reason
    assert not Path(runc_config.runtime_dir("runc"), "workers", "w-noimg").exists()
    assert not root_of(node, "w-noimg").exists()
    node.close()


def test_a_strict_umask_in_berth_does_not_lock_the_worker_out_of_its_root(runc_node: Node) -> None:
    old = os.umask(0o177)  # as `berth serve` runs
    try:
        runc_node.launch(spec("w-umask", "raise SystemExit(5)"), on_exit=lambda r: None)
    finally:
        os.umask(old)
    assert runc_node.wait("w-umask", WAIT).exit_code == 5


def test_a_worker_flooding_its_output_is_kept_within_the_node_log_limits(runc_config: NodeConfig) -> None:
    cfg = runc_config.model_copy(update={"container": runc_config.container.model_copy(
        update={"log_max_size_mb": 1, "log_max_files": 2})})
    node = Node(cfg)
    flood = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(6 * 1024): sys.stdout.write(line)\n" \
            "sys.stdout.flush()\nopen('ready', 'w').close()\n" + WAIT_FOR_GO
    node.launch(spec("w-flood", flood), on_exit=lambda r: None)
    wait_file(root_of(node, "w-flood") / "ready", node, "w-flood")  # 6 MiB written
    out = Path(cfg.runtime_dir("runc"), "workers", "w-flood", "output.log")
    poll_until(lambda: out.stat().st_size <= 2**20, "the shim to rotate the output")
    kept = sorted(p.name for p in out.parent.glob("output.log*"))
    assert kept == ["output.log", "output.log.1"]  # log_max_files = 2
    assert sum(p.stat().st_size for p in out.parent.glob("output.log*")) <= 2 * 2**20
    assert audit_worker(node, "w-flood").check("logs.limit").ok
    tail = b"".join(node.logs("w-flood", tail=2))
    assert tail.count(b"\n") == 2 and tail.endswith(b"x\n")
    go(node, "w-flood", "0")
    node.wait("w-flood", WAIT)
    node.close()


def test_no_seccomp_profile_is_a_clear_launch_error_and_leaves_nothing(runc_config: NodeConfig,
                                                                       base: Path) -> None:
    cfg = runc_config.with_runtime_table("runc", default_seccomp=str(base / "missing.json"))
    node = Node(cfg)
    with pytest.raises(LaunchError) as err:
        node.launch(spec("w-nosc", "pass"), on_exit=lambda r: None)
    assert "runc.default_seccomp" in str(err.value) and "golang-github-containers-common" in str(err.value)
    assert not Path(cfg.runtime_dir("runc"), "workers", "w-nosc").exists() and not root_of(node, "w-nosc").exists()
    node.close()


def test_recover_removes_a_half_made_runc_worker(runc_node: Node, runc_config: NodeConfig) -> None:
    from berth import prepare_worker_dirs

    plan = runc_node.plan(spec("w-half", "pass"))
    prepare_worker_dirs(plan, [])
    runc_node.runtime.create(plan)  # as if berth died between create and start
    assert runc_node.inspect("w-half").state == "created"
    with Node(runc_config) as other:
        assert other.recover().removed == ["w-half"]
    assert not Path(runc_config.runtime_dir("runc"), "workers", "w-half").exists()
    assert not any("w-half" in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_audit_all_fails_on_an_unboxed_container_started_by_hand_under_the_cgroup_parent(
        runc_node: Node, runc_config: NodeConfig, base: Path) -> None:
    """Started in a runc root of its own and without berth's annotations, no runtime lists it as a
    worker; only the cgroup parent it was put under shows it."""
    runc_node.launch(spec("w-mine", READY_THEN_GO), on_exit=lambda r: None)
    wait_file(root_of(runc_node, "w-mine") / "ready", runc_node, "w-mine")
    bundle, root = base / "stranger", base / "stranger-root"
    for d in ("rootfs", "upper", "work"):
        (bundle / d).mkdir(parents=True)
    mount_overlay(RUNC_IMAGES[BB_IMAGE], str(bundle / "upper"), str(bundle / "work"), str(bundle / "rootfs"))
    name = f"stranger-{runc_config.node.name}"
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"},
        "process": {"args": ["sh", "-c", "sleep 600"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}],
                  "cgroupsPath": f"{runc_config.container.cgroup_parent}/{name}"}}))
    try:
        with open(base / "stranger.err", "w") as err:
            made = subprocess.run(["runc", "--root", str(root), "run", "-d", "--bundle", str(bundle), "s1"],
                                  stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        assert made.returncode == 0, (base / "stranger.err").read_text()
        assert [w.worker_id for w in runc_node.ps()] == ["w-mine"]  # no runtime sees it as a worker
        cfg = base / "berth.toml"
        cfg.write_text(config_toml(runc_config))
        r = CliRunner().invoke(main, ["--config", str(cfg), "audit", "--all"])
        assert r.exit_code == 1, r.output
        parent = runc_config.container.cgroup_parent.strip("/")
        assert f"FAIL  (cgroup parent) cgroup {parent}/{name}: " in r.output and "(sleep): uid 0," in r.output
        assert "w-mine: " in r.output and "FAIL  w-mine" not in r.output
    finally:
        subprocess.run(["runc", "--root", str(root), "delete", "--force", "s1"], capture_output=True)
        subprocess.run(["umount", str(bundle / "rootfs")], capture_output=True)
    go(runc_node, "w-mine", "0")
    runc_node.wait("w-mine", WAIT)


def test_kill_says_how_the_worker_ended_in_the_words_of_ps(runc_node: Node, runc_config: NodeConfig,
                                                          base: Path) -> None:
    runc_node.launch(spec("k-say", READY_THEN_GO), on_exit=lambda r: None)
    wait_file(root_of(runc_node, "k-say") / "ready", runc_node, "k-say")
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(runc_config))
    r = CliRunner().invoke(main, ["--config", str(cfg), "kill", "k-say", "--force"])
    assert (r.exit_code, r.output) == (0, "k-say: exited, killed by SIGKILL\n")  # not "exit code 137"


def _runc_node_at(runc_config: NodeConfig, local: Path, log: Path) -> Node:
    return Node(runc_config.model_copy(update={"node": runc_config.node.model_copy(
        update={"local_dir": str(local), "log_dir": str(log)})}))


@pytest.mark.parametrize("where", ["under /tmp", "through a symlink into /tmp"])
def test_node_dirs_under_tmp_or_through_a_symlink_are_not_hidden_by_the_workers_tmp(
        runc_config: NodeConfig, base: Path, where: str) -> None:
    """The worker's own ``/tmp`` bind is Storm's ninth mount; runc mounts in the order given, so
    with ``local_dir`` under ``/tmp`` it hid the worker dir mounted before it (the script could not
    be opened). Mounts go parent-first, as the engine orders them."""
    real = Path("/tmp", f"berth-test-{base.name}")
    real.mkdir(mode=0o755)
    top = real
    if where != "under /tmp":
        (base / "link").symlink_to(real)
        top = base / "link"
    try:
        node = _runc_node_at(runc_config, top / "local", top / "log")
        script = "import os, sys\nopen('/tmp/probe', 'w').write('t')\nsys.exit(7 if os.getcwd() else 1)\n"
        node.launch(spec("w-deep", script), on_exit=lambda r: None)
        rec = node.wait("w-deep", WAIT)
        out = b"".join(node.logs("w-deep")).decode(errors="replace")
        assert (rec.exit_code, rec.signal) == (7, None), out
        assert Path(node.plan(spec("w-deep", "")).layout.worker_tmp, "probe").read_text() == "t"
        node.cleanup("w-deep")
        node.close()
    finally:
        from berth._node.workdirs import remove_tree

        remove_tree(real)


def test_a_broken_meta_json_costs_only_its_own_worker(runc_node: Node, runc_config: NodeConfig) -> None:
    """A half-written or hand-edited ``meta.json`` (empty, not an object, no container id) must not
    stop berth from listing, recovering and serving the node's other workers; ``rm`` clears it."""
    workers = Path(runc_config.runtime_dir("runc"), "workers")
    broken = {"w-empty": "", "w-list": "[1, 2]", "w-noid": '{"labels": {"berth.worker": "w-noid"}}',
              "w-badlabels": '{"id": "0123", "labels": 5}'}
    try:
        runc_node.launch(spec("w-fine", READY_THEN_GO), on_exit=lambda r: None)
        wait_file(root_of(runc_node, "w-fine") / "ready", runc_node, "w-fine")
        for wid, text in broken.items():
            (workers / wid).mkdir(parents=True)
            (workers / wid / "meta.json").write_text(text)
        listed = {w.worker_id: w for w in runc_node.ps()}
        assert listed["w-fine"].running, listed
        with Node(runc_config) as other:
            other.recover()
            assert other.inspect("w-fine").running
        for wid in broken:
            runc_node.cleanup(wid)
            assert not (workers / wid).exists()
        assert "w-fine" in {w.worker_id for w in runc_node.ps()}
    finally:
        go(runc_node, "w-fine", "0")
        runc_node.wait("w-fine", WAIT)
        runc_node.cleanup("w-fine")
