"""Hostile tenants (issue 9): each test is an attack that once worked against a node, run against
the real engine, and the node's answer now.

A worker writes what it saw to files of its own directory; the test reads them from the host. No
test sleeps: exits are waited for on berth's reports, worker files by bounded polling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner

from berth import IdentityError, LaunchError, Node, PolicyError, WorkerSpec, audit_worker
from berth._cli import main
from berth._node.journal import ExitJournal
from berth._node.state import StateDir
from berth._paths import is_under

from ._helpers import TRY_READS, WAIT, WAIT_FOR_GO, WRITE_SECRETS, Exits, go, root_of, snapshot, wait_file, worker
from .conftest import SOCKET, config_toml, make_config, tmpfs

pytestmark = pytest.mark.integration


def cli(node: Node, base: Path, *args: str) -> tuple[int, str]:
    cfg = base / "berth.toml"
    if not cfg.exists():
        cfg.write_text(config_toml(node.config))
    r = CliRunner().invoke(main, ["--config", str(cfg), *args])
    return r.exit_code, r.output


# -- 9.1 a deep directory tree -------------------------------------------------------------------

DEEP_TREE = r"""
import os, sys
depth, victim, report = int(sys.argv[1]), sys.argv[2], os.path.abspath("deep-done")
open("keep", "w").write("the worker's own file")
keep = os.path.abspath("keep")
os.chdir("tmp")  # its /tmp, through the worker-root mount: a hard link cannot cross mounts
for _ in range(depth):
    os.mkdir("d")
    os.chdir("d")
os.symlink(victim, "to-victim")      # a host directory, by its host path
os.symlink("/", "to-root")
os.link(keep, "hard")                # a second name of a file of its own
os.mkdir("ro")
open("ro/f", "w").close()
os.chmod("ro", 0o500)                # a directory even its owner may not write
open(report, "w").close()
"""


@pytest.mark.parametrize("how", ["berth rm", "relaunch over a leftover root"])
def test_a_deep_tree_with_planted_links_is_removed_without_following_them(node: Node, base: Path, how: str) -> None:
    victim = base / "victim"
    (victim / "sub").mkdir(parents=True, mode=0o755)
    (victim / "file").write_text("host data")
    (victim / "sub" / "file").write_text("more host data")
    depth = 5000  # shutil.rmtree recursed on the Python stack: ~1,000 levels were enough to break it
    handle = node.launch(worker("w-deep", DEEP_TREE, str(depth), str(victim)), on_exit=lambda r: None)
    assert node.wait("w-deep", WAIT).exit_code == 0
    assert (root_of(node, "w-deep") / "deep-done").exists()
    if how == "berth rm":
        code, out = cli(node, base, "rm", "w-deep")
        assert (code, out) == (0, "w-deep: removed\n")
        assert not root_of(node, "w-deep").exists()
    else:  # the container went behind berth's back: the next launch finds the old root and discards it
        docker.APIClient(base_url=SOCKET, version="auto").remove_container(handle.container_id, force=True)
    node.launch(worker("w-deep", "print('again')"), on_exit=lambda r: None)
    assert node.wait("w-deep", WAIT).exit_code == 0
    assert sorted(os.listdir(root_of(node, "w-deep") / "tmp")) == []
    assert (victim / "file").read_text() == "host data"
    assert (victim / "sub" / "file").read_text() == "more host data"
    assert os.path.isdir("/usr/bin")


def test_a_root_that_cannot_be_removed_is_a_typed_error_not_a_traceback(node: Node, base: Path) -> None:
    node.launch(worker("w-stuck", "open('tmp/stuck', 'w').write('x')"), on_exit=lambda r: None)
    assert node.wait("w-stuck", WAIT).exit_code == 0
    stuck = root_of(node, "w-stuck") / "tmp" / "stuck"
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag")  # (a worker cannot set it: no CAP_LINUX_IMMUTABLE)
    try:
        code, out = cli(node, base, "rm", "w-stuck")
        assert code == 125 and out == (f"error: directories: cannot remove {root_of(node, 'w-stuck')}: "
                                       "Operation not permitted\n")
        assert node.ps() == []  # the container went first
        with pytest.raises(LaunchError) as info:
            node.launch(worker("w-stuck", "pass"), on_exit=lambda r: None)
        assert info.value.step == "directories" and "Operation not permitted" in info.value.reason
        assert node.ps() == []
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    node.launch(worker("w-stuck", "pass"), on_exit=lambda r: None)
    assert node.wait("w-stuck", WAIT).exit_code == 0


# -- 9.12 which process the OOM killer took -------------------------------------------------------------

CHILD_HOG = r"""
import os, sys
pid = os.fork()
if pid == 0:
    b = []
    while True:
        b.append(bytearray(8 * 1024 * 1024))
_, status = os.waitpid(pid, 0)
print("child ended by signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)
sys.exit(0)
"""

SELF_HOG = "b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))\n"


@pytest.mark.parametrize(("script", "code", "oom_killed", "victim"), [
    (CHILD_HOG, 0, False, "child"),
    (SELF_HOG, 137, True, "worker"),
], ids=["a child", "the worker itself"])
def test_oom_says_whether_the_worker_or_a_child_was_killed(node: Node, base: Path, script: str, code: int,
                                                          oom_killed: bool, victim: str) -> None:
    got = Exits()
    node.launch(worker("w-oom", script, memory_mb=48), on_exit=got)
    rec = got.of("w-oom")
    assert (rec.exit_code, rec.oom_killed, rec.oom_victim) == (code, oom_killed, victim)
    again = node.exit_record("w-oom")  # the same answer from the engine's state alone
    assert again is not None and (again.exit_code, again.oom_killed, again.oom_victim) == (code, oom_killed, victim)
    status, out = cli(node, base, "ps", "--json")
    [row] = json.loads(out)
    assert (status, row["exit_code"], row["oom_killed"], row["oom_victim"]) == (0, code, oom_killed, victim)
    journalled = ExitJournal(node.config.state_dir).entries()[rec.container_id]
    assert (journalled["oom_killed"], journalled["oom_victim"]) == (oom_killed, victim)


# -- 9.2, 9.3, 9.9 requests above the node's maxima --------------------------------------------------------

def test_requests_above_the_nodes_maxima_are_refused_and_leave_nothing_behind(node: Node) -> None:
    cfg, host = node.config, node.host
    assert host.memory_mb and host.pid_max
    node.launch(worker("w-fine", "pass"), on_exit=lambda r: None)
    assert node.wait("w-fine", WAIT).exit_code == 0
    dirs = (cfg.node.local_dir, cfg.node.log_dir, cfg.state_dir)
    before, workers_before = snapshot(*dirs), node.ps(detail=True)
    huge = "x" * 100_000
    cases: list[tuple[str, WorkerSpec, str]] = [
        ("more memory than the host has", worker("w-mem", "pass", memory_mb=100_000_000), "memory_mb"),
        ("all of the host's RAM", worker("w-ram", "pass", memory_mb=host.memory_mb), "memory_mb"),
        ("pids up to pid_max", worker("w-pids", "pass", pids_limit=host.pid_max), "pids_limit"),
        ("a 50 MB argv", worker("w-argv", "pass", *[huge] * 500), "command"),
        ("a 3 MB environment", worker("w-env", "pass", env={f"V{i}": huge for i in range(30)}), "env"),
    ]
    for case, spec, field in cases:
        with pytest.raises(PolicyError) as info:
            node.launch(spec, on_exit=lambda r: None)
        assert info.value.field == field, f"{case}: {info.value}"
        assert snapshot(*dirs) == before, case
        assert node.ps(detail=True) == workers_before, case


def test_audit_checks_the_nodes_memory_pids_and_log_maxima(node: Node, base: Path, node_name: str) -> None:
    node.launch(worker("w-big", "open('ready', 'w').close()\n" + WAIT_FOR_GO, memory_mb=512, pids_limit=2000),
                on_exit=lambda r: None)
    wait_file(root_of(node, "w-big") / "ready", node, "w-big")
    assert audit_worker(node, "w-big").ok
    strict = Node(make_config(base, node_name, memory_mb=128, max_memory_mb=256, pids_limit=100,
                              max_pids_limit=1000, log_max_size_mb=1, log_max_files=2))
    try:
        report = audit_worker(strict, "w-big")
    finally:
        strict.close()
    # (with no plan, its planned read-write mounts are not known either)
    assert {c.name for c in report.failed} == {"plan", "memory.node_max", "pids.node_max", "logs.limit",
                                               "mounts.no_other_writable"}
    assert report.check("logs.limit").line() == \
        "FAIL  logs.limit: observed at most 5 file(s) of 20 MiB  (expected at most 2 file(s) of 1 MiB)"
    assert report.check("memory.node_max").observed == "512 MiB"
    assert report.check("pids.node_max").line() == \
        "FAIL  pids.node_max: observed 2000  (expected at most 1000 (the node's maximum))"
    go(node, "w-big")
    assert node.wait("w-big", WAIT).exit_code == 0


# -- 9.6 who may run workers ------------------------------------------------------------------------

def test_the_nodes_user_policy_is_enforced_through_the_node(engine: str, users: dict[str, Any], base: Path,
                                                            node_name: str) -> None:
    cfg = make_config(base, node_name)
    cfg = cfg.model_copy(update={"node": cfg.node.model_copy(update={
        "allowed_users": ("berth-alice",), "allowed_groups": ("berth-team",)})})
    with Node(cfg) as node:
        for user in ("berth-alice", "berth-carol"):  # by name; by group (carol's primary group)
            node.launch(worker(f"w-ok-{user[6:]}", "pass", user=user, topology_id=f"t-{user[6:]}"),
                        on_exit=lambda r: None)
            assert node.wait(f"w-ok-{user[6:]}", WAIT).exit_code == 0
        dirs = (cfg.node.local_dir, cfg.node.log_dir, cfg.state_dir)
        before, workers_before = snapshot(*dirs), node.ps(detail=True)
        for user, words in (("berth-bob", "may not run workers on this node"), ("nobody", "banned")):
            with pytest.raises(IdentityError) as info:
                node.launch(worker("w-refused", "pass", user=user, topology_id="t-x"), on_exit=lambda r: None)
            assert info.value.field == "user" and words in info.value.reason
            assert snapshot(*dirs) == before and node.ps(detail=True) == workers_before
    banned = cfg.model_copy(update={"node": cfg.node.model_copy(update={"banned_users": ("berth-alice",)})})
    with Node(banned) as node, pytest.raises(IdentityError, match="'berth-alice' is banned"):
        node.launch(worker("w-banned", "pass"), on_exit=lambda r: None)


# -- 9.7 tenants who share a primary group -------------------------------------------------------------


def test_tenants_sharing_a_primary_group_cannot_read_each_others_files(node: Node, users: dict[str, Any]) -> None:
    carol, dave = users["berth-carol"], users["berth-dave"]
    assert carol.pw_gid == dave.pw_gid  # the premise: one primary group
    lay = node.plan(worker("w-carol", "pass", user="berth-carol", topology_id="topo-c")).layout
    node.launch(worker("w-carol", WRITE_SECRETS, lay.worker_root, lay.worker_tmp, lay.artifacts,
                       lay.shared_by_topology, user="berth-carol", topology_id="topo-c"), on_exit=lambda r: None)
    wait_file(root_of(node, "w-carol") / "ready", node, "w-carol")
    mine = [lay.worker_root, lay.worker_tmp, lay.artifacts, lay.shared_by_topology]
    targets = mine + [f"{d}/secret" for d in mine] + [lay.user_file, lay.script]
    node.launch(worker("w-dave", TRY_READS, json.dumps(targets), user="berth-dave", topology_id="topo-d",
                       port=6701), on_exit=lambda r: None)
    assert node.wait("w-dave", WAIT).exit_code == 0
    seen = json.loads((root_of(node, "w-dave") / "report.json").read_text())
    assert {p: v for p, v in seen.items() if v not in ("ENOENT", "EACCES")} == {}
    # The supervisor dir is mounted read-only into every worker: carol's shared dir is there by path.
    assert seen[lay.shared_by_topology] == "EACCES"
    # On the host too, dave's uid and group are kept out of every one of carol's directories.
    for path in mine:
        probe = subprocess.run(["python3", "-c", "import os,sys; os.listdir(sys.argv[1])", path], user=dave.pw_uid,
                               group=dave.pw_gid, extra_groups=[], capture_output=True, text=True)
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, path
    go(node, "w-carol")
    assert node.wait("w-carol", WAIT).exit_code == 0


# -- 9.4 a worker's output -------------------------------------------------------------------------------

FLOOD = r"""
import os, sys
line = b"x" * 999 + b"\n"
block = line * 1024
for _ in range(int(sys.argv[1])):  # blocks of 1024 lines, a MiB give or take
    os.write(1, block)
"""


def _log_files_bytes(container_id: str) -> int:
    path = docker.APIClient(base_url=SOCKET, version="auto").inspect_container(container_id)["LogPath"]
    d = Path(path).parent
    return sum(p.stat().st_size for p in d.iterdir() if p.name.startswith(Path(path).name))


def test_a_worker_flooding_its_output_keeps_only_the_nodes_log_limit(engine: str, users: dict[str, Any],
                                                                      base: Path, node_name: str) -> None:
    cfg = make_config(base, node_name, log_max_size_mb=1, log_max_files=2)
    with Node(cfg) as node:
        handle = node.launch(worker("w-flood", FLOOD, "40"), on_exit=lambda r: None)
        assert node.wait("w-flood", WAIT).exit_code == 0
        kept = _log_files_bytes(handle.container_id)
        assert 0 < kept <= 2 * 1024 * 1024 + 64 * 1024, kept  # 40 MiB written; two files of 1 MiB kept
        assert b"".join(node.logs("w-flood", tail=1)) == b"x" * 999 + b"\n"  # the newest output is what is kept


RSS_OF_CHILD = r"""
import resource, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
n = 0
while chunk := p.stdout.read(1 << 20):
    n += len(chunk)
print(p.wait(), n, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def test_berth_logs_streams_a_large_log_without_holding_it(engine: str, users: dict[str, Any], base: Path,
                                                           node_name: str) -> None:
    cfg = make_config(base, node_name, log_max_size_mb=128, log_max_files=1)
    (base / "berth.toml").write_text(config_toml(cfg))
    mib = 100
    with Node(cfg) as node:
        node.launch(worker("w-big-log", FLOOD, str(mib)), on_exit=lambda r: None)
        node.launch(worker("w-small-log", FLOOD, "1", port=6701), on_exit=lambda r: None)
        assert node.wait("w-big-log", WAIT).exit_code == 0 and node.wait("w-small-log", WAIT).exit_code == 0

    def berth_logs(*args: str) -> tuple[int, int, int]:
        cmd = [sys.executable, "-c", RSS_OF_CHILD, sys.executable, "-m", "berth", "--config",
               str(base / "berth.toml"), "logs", *args]
        code, size, rss = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        return int(code), int(size), int(rss)

    code, size, small_rss = berth_logs("w-small-log")
    assert (code, size) == (0, 1024 * 1000)  # 1024 lines of 1000 bytes
    code, size, big_rss = berth_logs("w-big-log")
    assert (code, size) == (0, mib * 1024 * 1000)  # every byte
    assert big_rss < small_rss + 32 * 2**20, (big_rss, small_rss)  # not the 100 MiB it printed
    code, size, tail_rss = berth_logs("w-big-log", "--tail", "3")
    assert (code, size) == (0, 3000) and tail_rss < small_rss + 32 * 2**20


# -- 9.5 a tenant fills the disk the workers' directories are on ------------------------------------------

FILL = r"""
import errno, os
written = 0
try:
    with open("/tmp/filler", "wb", buffering=0) as fh:
        while True:
            written += fh.write(b"\0" * 65536)
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
print("filled after", written, flush=True)
"""


@pytest.fixture
def small_local(base: Path) -> Iterator[Path]:
    """``local_dir`` on a filesystem of its own, 16 MiB: what one tenant can fill."""
    with tmpfs(base / "local", 16) as local:
        yield local


def test_a_full_local_dir_fails_launches_cleanly_and_exits_are_still_recorded(
        engine: str, users: dict[str, Any], base: Path, node_name: str, small_local: Path) -> None:
    cfg = make_config(base, node_name)
    assert not is_under(cfg.state_dir, str(small_local))
    with Node(cfg) as node:
        got = Exits()
        filler = node.launch(worker("w-fill", FILL), on_exit=got)
        assert got.of("w-fill").exit_code == 0  # it filled the disk, and its exit was journalled:
        assert filler.container_id in ExitJournal(cfg.state_dir).known()
        dirs = (cfg.node.local_dir, cfg.node.log_dir, cfg.state_dir)
        before, workers_before = snapshot(*dirs), node.ps(detail=True)
        with pytest.raises(LaunchError) as info:
            node.launch(worker("w-next", "pass", user="berth-bob", topology_id="t-bob"), on_exit=got)
        assert info.value.step == "directories" and info.value.reason == "No space left on device"
        assert snapshot(*dirs) == before and node.ps(detail=True) == workers_before
        node.cleanup("w-fill")  # the space comes back with the worker's directories
        node.launch(worker("w-next", "pass", user="berth-bob", topology_id="t-bob"), on_exit=got)
        assert got.of("w-next").exit_code == 0


# -- 9.10 two berth processes launch the same worker id --------------------------------------------------

def test_concurrent_launches_of_one_id_from_two_processes_one_wins(node: Node, base: Path) -> None:
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(node.config))
    launch = [sys.executable, "-m", "berth", "--config", str(cfg), "launch", "--worker-id", "w-race", "--topology",
              "topo-r", "--port", "6700", "--user", "berth-alice", "--", "python3", "-c", "pass"]
    for _ in range(3):
        procs = [subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = sorted((p.wait(WAIT), *p.communicate()) for p in procs)
        (won, cid, _), (lost, _, error) = results
        assert (won, lost) == (0, 125) and len(cid.strip()) == 64, results
        assert error in ("error: worker_id: a launch of 'w-race' is already under way (another berth process "
                         "or thread holds it)\n",
                         "error: worker_id: worker 'w-race' already exists on this node (created); remove it first\n",
                         "error: worker_id: worker 'w-race' already exists on this node (running); remove it first\n",
                         "error: worker_id: worker 'w-race' already exists on this node (exited); remove it first\n"), \
            results
        assert [w.container_id for w in node.ps()] == [cid.strip()]
        node.cleanup("w-race")


def test_a_launch_while_another_process_holds_the_claim_is_refused_and_leaves_nothing(node: Node, base: Path) -> None:
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(node.config))
    node.launch(worker("w-other", "pass", port=6701), on_exit=lambda r: None)
    node.wait("w-other", WAIT)
    dirs = (node.config.node.local_dir, node.config.node.log_dir, node.config.state_dir)
    launch = [sys.executable, "-m", "berth", "--config", str(cfg), "launch", "--worker-id", "w-held", "--topology",
              "topo-r", "--port", "6700", "--user", "berth-alice", "--", "python3", "-c", "pass"]
    with StateDir(node.config).claim("w-held"):  # as a launch in another berth process would hold it
        before = snapshot(*dirs)
        done = subprocess.run(launch, capture_output=True, text=True)
        assert (done.returncode, done.stderr) == (125, "error: worker_id: a launch of 'w-held' is already under way "
                                                       "(another berth process or thread holds it)\n")
        assert snapshot(*dirs) == before and [w.worker_id for w in node.ps()] == ["w-other"]
    assert subprocess.run(launch, capture_output=True, text=True).returncode == 0


def test_supervise_refuses_to_start_on_a_state_dir_workers_can_write(node: Node, base: Path) -> None:
    cfg = node.config
    rw = base / "shared-scratch"
    (rw / "state").mkdir(parents=True)
    bad = cfg.model_copy(update={"node": cfg.node.model_copy(update={"state_dir": str(rw / "state")}),
                                 "container": cfg.container.model_copy(update={"readwrite_mounts": (str(rw),)})})
    toml = config_toml(bad).replace("[container]\n", f'[container]\nreadwrite_mounts = ["{rw}"]\n')
    (base / "bad.toml").write_text(toml)
    (base / "assignments.yaml").write_text("workers: []\n")
    r = CliRunner().invoke(main, ["--config", str(base / "bad.toml"), "supervise", "--assignments",
                                  str(base / "assignments.yaml")])
    assert r.exit_code == 125 and r.output.startswith(f"error: node.state_dir: {rw / 'state'} resolves to ")
    assert "overlaps container.readwrite_mounts[0]" in r.output


# -- 9.8 a worker that stops its own PID 1 ---------------------------------------------------------------

STOP_PID1 = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = os.fork()
if pid == 0:
    # PTRACE_ATTACH to PID 1, the engine's tini: it stops, and stays stopped when the tracer goes.
    os._exit(0 if libc.ptrace(16, 1, None, None) == 0 else 1)
_, status = os.waitpid(pid, 0)
print("attached" if status == 0 else "refused", flush=True)
sys.exit(7)
"""


def test_a_worker_that_stops_its_pid_1_is_seen_as_stopped_not_running(node: Node, base: Path) -> None:
    (base / "berth.toml").write_text(config_toml(node.config))
    launch = [sys.executable, "-m", "berth", "--config", str(base / "berth.toml"), "launch", "--worker-id",
              "w-stop1", "--topology", "topo-s", "--port", "6700", "--user", "berth-alice", "--wait", "--",
              "python3", "-c", STOP_PID1]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=WAIT)  # before: --wait never returned
    assert done.returncode == 125, done
    assert done.stderr == ("error: worker_id: worker 'w-stop1' cannot end by itself: its PID 1 was stopped from "
                           "inside the worker (ptrace); its program may have ended; berth kill --force it\n")
    assert b"attached" in b"".join(node.logs("w-stop1"))
    code, out = cli(node, base, "ps", "--json")
    [row] = json.loads(out)
    assert (code, row["state"], row["main_stopped"]) == (0, "running", True)
    report = audit_worker(node, "w-stop1")
    assert {c.name for c in report.failed} == {"main.not_stopped"}
    got = Exits()
    node.set_default_callback(got)
    node.recover()
    node.force_kill("w-stop1")
    rec = got.of("w-stop1")
    assert (rec.exit_code, rec.signal) == (137, 9)


def test_a_supervised_worker_that_stops_its_pid_1_is_stalled_then_replaced(node: Node, base: Path) -> None:
    """The supervisor's part of 9.8: such a worker's exit would never come, so it is shown as
    ``stalled`` and, still stopped after ``stalled_after_s``, killed and started again as a
    failure (cause ``stalled``); the node's other workers are not touched."""
    from berth import Supervisor

    from .test_supervisor import FOREVER, Watch, fast, write
    from .test_supervisor import worker as entry

    cfg = fast(node.config)
    cfg = cfg.model_copy(update={"supervisor": cfg.supervisor.model_copy(update={"stalled_after_s": 1.0})})
    path = base / "assign.yaml"
    write(path, [entry("w-stall", 6960, STOP_PID1), entry("w-calm", 6961, FOREVER)])
    sup = Supervisor(Node(cfg), assignments_path=str(path))
    sup.loop.stall_sweep_s = 0.2
    watch = Watch(sup)
    sup.start()
    try:
        watch.until(lambda: any(x["worker_id"] == "w-stall" and x["to"] == "stalled" for x in watch.lines),
                    "w-stall stalled")
        watch.until(lambda: sup.status("w-stall").restarts >= 1, "w-stall killed and started again")
        first = next(e for e in watch.exits if e.worker_id == "w-stall")
        assert (first.cause, first.record.exit_code) == ("stalled", 137)
        assert any(x["worker_id"] == "w-stall" and "its PID 1 stayed stopped" in x["reason"] for x in watch.lines)
        assert sup.status("w-stall").failures >= 1
        assert sup.status("w-calm").phase == "running" and sup.status("w-calm").restarts == 0
    finally:
        sup.stop(drain=True)
