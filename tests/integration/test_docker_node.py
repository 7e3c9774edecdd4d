"""The node against a real dockerd: exit codes, isolation, concurrency, recovery, failures."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import docker
import pytest

from berth import LaunchError, Node, NodeConfig, prepare_worker_dirs
from berth._linux.cgroup import cgroup_dir

from ._helpers import WAIT, WAIT_FOR_GO, Exits, go, release, wait_file
from ._helpers import worker as spec
from .conftest import ROOT, SOCKET, config_toml, make_config, poll_until

pytestmark = pytest.mark.integration



def test_exit_code_is_the_workers_own(node: Node) -> None:
    node.launch(spec("w-exit3", "raise SystemExit(3)"), on_exit=lambda r: None)
    rec = node.wait("w-exit3", WAIT)
    assert (rec.exit_code, rec.signal, rec.oom_killed) == (3, None, False)
    assert rec.started_at and rec.finished_at


def test_sigkill_is_reported_as_signal_9_and_not_oom(node: Node) -> None:
    node.launch(spec("w-kill", WAIT_FOR_GO, memory_mb=64), on_exit=lambda r: None)
    node.force_kill("w-kill")
    rec = node.wait("w-kill", WAIT)
    assert (rec.exit_code, rec.signal, rec.oom_killed) == (137, 9, False)


def test_oom_kill_is_reported_as_oom(node: Node) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))\n"
    node.launch(spec("w-oom", hog, memory_mb=48), on_exit=lambda r: None)
    rec = node.wait("w-oom", WAIT)
    assert rec.signal == 9 and rec.oom_killed is True


def test_kill_with_grace_sends_sigterm_first(node: Node) -> None:
    script = ("import signal,sys,os\n"
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
              "open('ready','w').close()\n"
              "while True: signal.pause()\n")
    node.launch(spec("w-term", script), on_exit=lambda r: None)
    wait_file(Path(node.config.node.local_dir, "workers", "w-term", "ready"), node, "w-term")
    node.kill("w-term", grace_s=30)
    rec = node.wait("w-term", WAIT)
    assert rec.exit_code == 42 and rec.signal is None


def test_isolation_seen_from_inside_the_worker(node: Node, users: dict[str, Any]) -> None:
    probe = (
        "import os, json\n"
        "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "def can_write(p):\n"
        "    try:\n"
        "        open(p, 'w').close(); return True\n"
        "    except OSError: return False\n"
        "r = {'CapEff': st['CapEff'].strip(), 'CapPrm': st['CapPrm'].strip(), 'CapBnd': st['CapBnd'].strip(),\n"
        "     'NoNewPrivs': st['NoNewPrivs'].strip(), 'Seccomp': st['Seccomp'].strip(),\n"
        "     'uid': os.getuid(), 'gid': os.getgid(), 'groups': sorted(os.getgroups()),\n"
        "     'root_w': can_write('/x'), 'usr_w': can_write('/usr/x'), 'tmp_w': can_write('/tmp/probe'),\n"
        f"     'sup_w': can_write('{node.config.node.local_dir}/supervisor/x'),\n"
        "     'cwd': os.getcwd()}\n"
        "open('/tmp/report.json', 'w').write(json.dumps(r))\n" + WAIT_FOR_GO)
    handle = node.launch(spec("w-iso", probe, cpu_percent=50, memory_mb=96, cores=(0,), numa_node=0,
                              pids_limit=77), on_exit=lambda r: None)
    lay = handle.plan.layout
    report_path = Path(lay.worker_tmp, "report.json")
    wait_file(report_path, node, "w-iso")
    rep = json.loads(report_path.read_text())
    alice = users["berth-alice"]
    assert rep["CapEff"] == rep["CapPrm"] == rep["CapBnd"] == "0000000000000000"
    assert rep["NoNewPrivs"] == "1" and rep["Seccomp"] == "2"
    assert (rep["uid"], rep["gid"]) == (alice.pw_uid, alice.pw_gid)
    assert rep["groups"] == sorted(handle.plan.identity.groups) and 2200 in rep["groups"]
    assert rep["root_w"] is False and rep["usr_w"] is False and rep["sup_w"] is False
    assert rep["tmp_w"] is True and Path(lay.worker_tmp, "probe").exists()  # /tmp is the worker's tmp/
    assert rep["cwd"] == lay.worker_root
    pid = node.inspect("w-iso").pid
    assert pid
    limits = _cgroup_limits(pid)
    assert limits["memory"] == 96 * 1024 * 1024
    assert limits["cpu"] == 50_000  # quota per 100 ms period = 0.5 cpu
    assert limits["cpus"] == "0" and limits["mems"] == "0"
    assert limits["pids"] == "77"
    go(node, "w-iso")
    assert node.wait("w-iso", WAIT).exit_code == 0


def _cgroup_limits(pid: int) -> dict[str, Any]:
    def read(ctrl: str, v1: str, v2: str) -> str:
        d, version = cgroup_dir(pid, ctrl)
        return Path(d, v1 if version == 1 else v2).read_text().strip()

    out: dict[str, Any] = {"memory": int(read("memory", "memory.limit_in_bytes", "memory.max")),
                           "cpus": read("cpuset", "cpuset.cpus", "cpuset.cpus"),
                           "mems": read("cpuset", "cpuset.mems", "cpuset.mems"),
                           "pids": read("pids", "pids.max", "pids.max")}
    d, version = cgroup_dir(pid, "cpu")
    if version == 1:
        quota, period = int(Path(d, "cpu.cfs_quota_us").read_text()), int(Path(d, "cpu.cfs_period_us").read_text())
    else:
        q, p = Path(d, "cpu.max").read_text().split()
        quota, period = int(q), int(p)
    out["cpu"] = quota * 100_000 // period
    return out


def test_memory_usage_exec_and_logs(node: Node) -> None:
    node.launch(spec("w-mem", "print('hello from the worker', flush=True)\n"
                     "x = bytearray(20 * 1024 * 1024)\nopen('ready','w').close()\n" + WAIT_FOR_GO,
                     memory_mb=128), on_exit=lambda r: None)
    wait_file(Path(node.config.node.local_dir, "workers", "w-mem", "ready"), node, "w-mem")
    assert node.memory_usage("w-mem") > 20 * 1024 * 1024
    res = node.exec("w-mem", ["id", "-u"])
    assert res.exit_code == 0 and res.output.strip() == b"2101"
    assert node.exec("w-mem", ["sh", "-c", "exit 5"]).exit_code == 5
    assert b"hello from the worker" in b"".join(node.logs("w-mem"))
    go(node, "w-mem")
    node.wait("w-mem", WAIT)


def test_all_dead_is_not_fooled_by_a_name_prefix(node: Node) -> None:
    node.launch(spec("w1", "pass"), on_exit=lambda r: None)
    node.launch(spec("w10", WAIT_FOR_GO, port=6701), on_exit=lambda r: None)
    node.wait("w1", WAIT)
    assert node.all_dead("w1") is True
    assert node.all_dead("w10") is False
    assert node.all_dead("w100") is True
    go(node, "w10")
    node.wait("w10", WAIT)
    assert node.all_dead("w10") is True


def test_cleanup_removes_container_and_dirs_but_keeps_artifacts(node: Node) -> None:
    write = "import sys\nopen(sys.argv[1] + '/out.txt', 'w').write('kept')"
    plan = node.plan(spec("w-clean", write))
    art = plan.layout.artifacts
    node.launch(spec("w-clean", write).model_copy(update={"command": ("python3", "-c", write, art)}),
                on_exit=lambda r: None)
    assert node.wait("w-clean", WAIT).exit_code == 0
    node.cleanup("w-clean")
    assert node.all_dead("w-clean")
    assert not Path(plan.layout.worker_root).exists()
    assert not Path(plan.layout.user_file).exists()
    assert Path(art, "out.txt").read_text() == "kept"
    client = docker.APIClient(base_url=SOCKET, version="auto")
    assert client.containers(all=True, filters={"label": "berth.worker=w-clean"}) == []


def test_missing_image_leaves_nothing_behind(node: Node) -> None:
    cfg = make_config(Path(node.config.node.local_dir).parent, node.config.node.name)
    cfg = cfg.model_copy(update={"images": cfg.images.model_copy(update={"allowed": ("*",)})})
    n = Node(cfg)
    with pytest.raises(LaunchError) as info:
        n.launch(spec("w-noimg", "pass", image="berth/does-not-exist:1"))
    assert info.value.step == "image" and "never pulls" in str(info.value)
    assert n.all_dead("w-noimg")
    assert not Path(cfg.node.local_dir, "workers", "w-noimg").exists()
    n.close()


def test_engine_refusing_a_setting_leaves_nothing_behind(base: Path, node_name: str, engine: str,
                                                         users: dict[str, Any]) -> None:
    bad = base / "seccomp.json"
    bad.write_text("{not json")
    cfg = make_config(base, node_name, seccomp_profile=str(bad))
    n = Node(cfg)
    with pytest.raises(LaunchError) as info:
        n.launch(spec("w-refused", "pass"))
    assert info.value.step == "start"  # dockerd checks the profile only when it starts the container
    assert "seccomp" in str(info.value)
    client = docker.APIClient(base_url=SOCKET, version="auto")
    assert client.containers(all=True, filters={"label": f"berth.node={node_name}"}) == []
    assert not Path(cfg.node.local_dir, "workers", "w-refused").exists()
    assert not Path(cfg.node.local_dir, "workers-users", "w-refused").exists()
    assert not Path(cfg.node.log_dir, "workers-artifacts", "topo-h").exists()
    n.close()


def test_fifty_concurrent_launches_each_exit_reported_once_with_flat_threads(node: Node) -> None:
    from concurrent.futures import ThreadPoolExecutor

    got = Exits()
    node._ensure_watching()
    baseline = threading.active_count()
    ids = [f"c{i:02d}" for i in range(50)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda w: node.launch(spec(w, WAIT_FOR_GO + f"raise SystemExit({int(w[1:]) % 7})",
                                                 memory_mb=32, port=7000 + int(w[1:])), on_exit=got), ids))
    running = [w for w in node.ps() if w.running]
    assert len(running) == 50
    assert threading.active_count() == baseline  # no thread per worker once the launches are done
    for w in ids:
        go(node, w)
    records = got.wait_for(50)
    assert sorted(r.worker_id for r in records) == ids
    assert {r.worker_id: r.exit_code for r in records} == {w: int(w[1:]) % 7 for w in ids}
    node._reconcile()  # a reconcile after the fact reports nothing twice
    assert len(got.records) == 50
    assert threading.active_count() == baseline


RECOVER_CHILD = r"""
import json, sys
from berth._storm.loading import load_config
from berth import Node
from berth import WorkerSpec
cfg = load_config(sys.argv[1])
node = Node(cfg)
script = "import os,time,sys\nwhile not os.path.exists('go'): time.sleep(0.02)\nsys.exit(int(open('go').read() or 0))\n"
for i in range(13):
    node.launch(WorkerSpec(worker_id=f"r{i}", topology_id="topo-r", port=6800 + i, user="berth-bob",
                           command=("python3", "-c", script), memory_mb=32), on_exit=lambda r: None)
print("launched", flush=True)
sys.stdin.read()
"""


def test_recover_after_sigkill_reports_the_exits_and_adopts_the_rest(config: NodeConfig, base: Path) -> None:
    cfg_file = base / "berth.toml"
    cfg_file.write_text(config_toml(config))
    child = subprocess.Popen([sys.executable, "-c", RECOVER_CHILD, str(cfg_file)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdout is not None and child.stdout.readline().strip() == "launched"
    before = {w.worker_id: (w.container_id, w.started_at) for w in Node(config).ps(detail=True)}
    assert len(before) == 13
    child.kill()  # SIGKILL: berth dies without any cleanup
    child.wait()
    observer = Node(config)
    for i in range(3):
        release(Path(config.node.local_dir, "workers", f"r{i}"), str(10 + i))
    for i in range(3):  # wait until the engine has them exited; no berth process is watching
        def exited(wid: str = f"r{i}") -> bool:
            return observer.inspect(wid).state == "exited"

        poll_until(exited, f"r{i} exited")
    got = Exits()
    fresh = Node(config, on_exit=got)
    report = fresh.recover()
    assert sorted((r.worker_id, r.exit_code) for r in report.reported) == [("r0", 10), ("r1", 11), ("r2", 12)]
    assert sorted(report.adopted) == sorted(f"r{i}" for i in range(3, 13))
    after = {w.worker_id: (w.container_id, w.started_at) for w in fresh.ps(detail=True)}
    assert after == before  # same containers, none restarted
    assert len(got.wait_for(3)) == 3
    release(Path(config.node.local_dir, "workers", "r5"), "7")
    recs = got.wait_for(4)
    assert recs[3].worker_id == "r5" and recs[3].exit_code == 7
    # a second recovery reports nothing again: the journal remembers
    again = Node(config, on_exit=got).recover()
    assert again.reported == []
    fresh.close()


def test_recover_removes_half_made_containers(node: Node) -> None:
    plan = node.plan(spec("w-half", "pass"))
    prepare_worker_dirs(plan, [])
    node.runtime.create(plan)  # as if berth died between create and start
    report = Node(node.config).recover()
    assert report.removed == ["w-half"]
    assert node.all_dead("w-half")
    client = docker.APIClient(base_url=SOCKET, version="auto")
    assert client.containers(all=True, filters={"label": "berth.worker=w-half"}) == []
