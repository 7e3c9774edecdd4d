"""berth's worker-launcher commands (issue 17.3): Storm's checks and exit codes (``main.c``,
``worker-launcher.c`` at v2.8.4), Storm's modes, and what a hostile worker plants in the trees.

The users are the machine's test users (``scripts/users``); berth-dave stands in for Storm's
supervisor user (the ``storm`` user is scripts/storm's)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from berth._core.config import config_from_mapping
from berth._node import launcher
from berth._node.launcher import LauncherPolicy, Outcome, Workers, resolve_policy
from berth._node.stormtrees import launcher_mode
from berth._runtimes.base import ExecResult, WorkerState, WorkerStatus
from berth._storm.yaml import BERTH_PLUGIN

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="gives trees to other users, as berth does")

ALICE, BOB, DAVE, TEAM = 2101, 2102, 2104, 2300
TOPO = "wc-1-1700000000"


def make_policy(base: Path, **node: Any) -> LauncherPolicy:
    config = config_from_mapping({
        "node": {"name": "n1", "local_dir": str(base / "local"), "log_dir": str(base / "log"),
                 "state_dir": str(base / "state"), **node},
        "storm": {"plugin": BERTH_PLUGIN, "supervisor_user": "berth-dave"}})
    policy = resolve_policy(config)
    assert policy is not None
    return policy


@pytest.fixture
def policy(base: Path) -> LauncherPolicy:
    return make_policy(base)


class FakeWorkers(Workers):
    def __init__(self, states: Sequence[WorkerState] = (), result: ExecResult | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.result = result or ExecResult(exit_code=0, output=b"")
        super().__init__(lambda: list(states), self._exec)

    def _exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        self.calls.append((worker_id, list(argv)))
        return self.result


def state(worker_id: str, user: str, pid: int | None = None, topology: str = TOPO, port: int = 6700) -> WorkerState:
    return WorkerState(worker_id=worker_id, container_id="c-" + worker_id, topology_id=topology, port=port,
                       user=user, image="berth/storm:latest", state=WorkerStatus.RUNNING, pid=pid)


def call(policy: LauncherPolicy, *argv: str, workers: Workers | None = None) -> Outcome:
    return launcher.run(list(argv), policy, workers or FakeWorkers())


def stormdist(base: Path, topo: str = TOPO) -> Path:
    """A topology's code dir as Storm's supervisor (user berth-dave here) leaves it."""
    top = base / "local" / "supervisor" / "stormdist" / topo
    (top / "resources" / "sub").mkdir(parents=True)
    (top / "stormjar.jar").write_bytes(b"jar")
    os.chmod(top / "stormjar.jar", 0o644)
    (top / "resources" / "sub" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(top / "resources" / "sub" / "run.sh", 0o755)
    for p in (top, top / "resources", top / "resources" / "sub"):
        os.chmod(p, 0o755)
    for p in (top, *top.rglob("*")):
        os.lchown(p, DAVE, TEAM)
    return top


def ids(p: Path) -> tuple[int, int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# -- the modes Storm's setup_permissions gives ------------------------------------------------------------

@pytest.mark.parametrize(("mode", "user_write", "setgid", "expected"), [
    (stat.S_IFDIR | 0o755, False, True, 0o2570),  # code-dir, blob: r-x for the user, rws for the group
    (stat.S_IFDIR | 0o755, True, True, 0o2770),   # artifacts-dir
    (stat.S_IFDIR | 0o700, True, False, 0o770),   # the worker's tmp (no setgid)
    (stat.S_IFREG | 0o644, False, True, 0o460),
    (stat.S_IFREG | 0o755, False, True, 0o560),
    (stat.S_IFREG | 0o644, True, True, 0o660),
    (stat.S_IFREG | 0o4777, True, True, 0o760),   # setuid and others' bits never kept
    (stat.S_IFREG | 0o000, False, True, 0o060),
])
def test_launcher_mode_is_setup_permissions(mode: int, user_write: bool, setgid: bool, expected: int) -> None:
    assert launcher_mode(mode, setgid, user_write) == expected


# -- the user: Storm's check_user, berth's policy: exit 255 ----------------------------------------------

@pytest.mark.parametrize(("user", "node", "reason"), [
    ("root", {}, "'root' is root"),
    ("no-such-user-xyz", {}, "no such user 'no-such-user-xyz'"),
    ("berth-bob", {"banned_users": ("berth-bob",)}, "'berth-bob' is banned"),
    ("berth-alice", {"min_uid": 2102}, "has uid 2101, below the node's min_uid 2102"),
    ("berth-alice", {"allowed_users": ("berth-bob",)}, "not in node.allowed_users"),
    ("daemon", {}, "below the node's min_uid 1000"),
    ("berth-dave", {}, "Storm's supervisor's own user"),
    ("berth-carol", {}, "is in group 2300, Storm's launcher group"),  # dave's primary group: the launcher's
])
def test_a_refused_user_exits_255_before_any_command(base: Path, user: str, node: dict[str, Any], reason: str) -> None:
    top = stormdist(base)
    out = call(make_policy(base, **node), user, "code-dir", str(top))
    assert out.code == 255
    assert len(out.output) == 1 and out.output[0].startswith("ERROR: user: ") and reason in out.output[0]
    assert ids(top) == (DAVE, TEAM, 0o755)  # nothing done


# -- the argv: Storm's counts and commands --------------------------------------------------------------

@pytest.mark.parametrize(("argv", "code", "said"), [
    ((), 1, "Usage: worker-launcher"),
    (("berth-alice",), 1, "Usage: worker-launcher"),
    (("berth-alice", "code-dir"), 1, "Incorrect number of arguments (3 vs 4) for code-dir"),
    (("berth-alice", "rmr", "/a", "/b"), 1, "Incorrect number of arguments (5 vs 4) for rmr"),
    (("berth-alice", "signal", "1"), 1, "Incorrect number of arguments (4 vs 5) for signal"),
    (("berth-alice", "run-oci-container", "a", "b"), 1, "Incorrect number of arguments (5 vs 6)"),
    (("berth-alice", "signal", "12x", "9"), 1, "Illegal argument for container pid 12x"),
    (("berth-alice", "signal", "12", "KILL"), 1, "Illegal argument for signal KILL"),
    (("berth-alice", "chmod-all", "/"), 3, "Invalid command chmod-all not supported."),
    (("berth-alice", "worker", "/w", "/w/storm-worker-script.sh"), 3, "berth's isolation plugin"),
    (("berth-alice", "launch-docker-container", "/w", "/w/f"), 3, "is not supported"),
    (("berth-alice", "RUN-DOCKER-CMD", "/w", "/w/docker-ps.sh"), 3, "run-docker-cmd is not supported"),
    (("berth-alice", "profile-docker-container", "w1", "/s"), 3, "is not supported"),
    (("berth-alice", "reap-oci-container", "c1", "3"), 3, "is not supported"),
    (("berth-alice", "profile-oci-container", "1", "/s"), 3, "is not supported"),
    (("berth-alice", "rmr", "/x" * 2049), 1, "longer than 4096 bytes"),
    (("berth-alice", "rmr", "a", "b", "c", "d", "e", "f", "g"), 1, "more than 8 arguments"),
])
def test_bad_argv_gets_storms_code(policy: LauncherPolicy, argv: tuple[str, ...], code: int, said: str) -> None:
    out = call(policy, *argv)
    assert out.code == code, out
    assert said in out.output[-1]


def test_the_first_lines_are_storms(base: Path, policy: LauncherPolicy) -> None:
    top = stormdist(base)
    out = call(policy, "berth-alice", "Code-Dir", str(top))  # strcasecmp, as Storm
    assert out.code == 0
    assert out.output[:2] == ["main : command provided Code-Dir", "main : user is berth-alice"]


# -- code-dir, artifacts-dir, blob: Storm's ownership and modes; what a worker plants is left alone ------

def test_code_dir_gives_the_tree_to_the_user_read_only(base: Path, policy: LauncherPolicy) -> None:
    top = stormdist(base)
    outside = base / "outside"
    outside.write_text("secret")
    os.chmod(outside, 0o600)
    (top / "resources" / "link").symlink_to(outside)
    os.link(outside, top / "resources" / "hard")
    os.mkfifo(top / "resources" / "fifo")
    out = call(policy, "berth-alice", "code-dir", str(top))
    assert out.code == 0, out
    assert ids(top) == (ALICE, TEAM, 0o2570)
    assert ids(top / "resources" / "sub") == (ALICE, TEAM, 0o2570)
    assert ids(top / "stormjar.jar") == (ALICE, TEAM, 0o460)
    assert ids(top / "resources" / "sub" / "run.sh") == (ALICE, TEAM, 0o560)
    assert ids(outside) == (0, 0, 0o600)  # neither through the link nor through the hard link
    assert os.lstat(top / "resources" / "link").st_uid == 0
    assert sorted(line for line in out.output if line.startswith("NOOP")) == [
        f"NOOP: {top}/…/fifo", f"NOOP: {top}/…/hard (a hard link: may be a file from elsewhere)", f"NOOP: {top}/…/link"]


def test_artifacts_dir_is_user_writable(base: Path, policy: LauncherPolicy) -> None:
    arts = base / "log" / "workers-artifacts" / TOPO / "6700"
    arts.mkdir(parents=True)
    (arts / "worker.yaml").write_text("x")
    os.chmod(arts, 0o755)
    os.chmod(arts / "worker.yaml", 0o644)
    assert call(policy, "berth-alice", "artifacts-dir", str(arts)).code == 0
    assert ids(arts) == (ALICE, TEAM, 0o2770)
    assert ids(arts / "worker.yaml") == (ALICE, TEAM, 0o660)
    assert ids(arts.parent)[0] == 0  # only the dir named


def test_artifacts_dir_takes_the_topologys_shared_dir_but_not_its_code(base: Path, policy: LauncherPolicy) -> None:
    top = stormdist(base)
    shared = top / "shared_by_topology"
    shared.mkdir()
    assert call(policy, "berth-alice", "artifacts-dir", str(shared)).code == 0
    assert ids(shared)[0] == ALICE and ids(shared)[2] == 0o2770
    out = call(policy, "berth-alice", "artifacts-dir", str(top))
    assert out.code == 21 and "artifacts-dir may not change" in out.output[-1]
    assert ids(top) == (DAVE, TEAM, 0o755)


def test_blob_takes_only_the_users_own_cache_and_single_files(base: Path, policy: LauncherPolicy) -> None:
    cache = base / "local" / "supervisor" / "usercache"
    for user in ("berth-alice", "berth-bob"):
        (cache / user / "filecache" / "files").mkdir(parents=True)
        (cache / user / "filecache" / "files" / "key.version").write_text("1\n")
    mine = cache / "berth-alice" / "filecache"
    assert call(policy, "berth-alice", "blob", str(mine)).code == 0
    assert ids(mine / "files") == (ALICE, TEAM, 0o2570)
    other = cache / "berth-bob" / "filecache" / "files" / "key.version"
    out = call(policy, "berth-alice", "blob", str(other))
    assert out.code == 21 and ids(other)[0] == 0
    assert call(policy, "berth-bob", "blob", str(other)).code == 0  # LocalizedResource's call on one file
    assert ids(other) == (BOB, TEAM, 0o460)


@pytest.mark.parametrize("make", ["outside", "dotdot", "relative", "root-itself", "link-on-the-way", "link-top",
                                  "missing"])
def test_paths_storm_never_names_are_refused_with_21(base: Path, policy: LauncherPolicy, make: str) -> None:
    top = stormdist(base)
    victim = base / "victim"
    (victim / "d").mkdir(parents=True)
    path = {
        "outside": str(victim),
        "dotdot": f"{top}/../../../../victim",
        "relative": "local/supervisor/stormdist/" + TOPO,
        "root-itself": str(top.parent),
        "link-on-the-way": str(top.parent / "planted" / "d"),
        "link-top": str(top.parent / "planted"),
        "missing": str(top.parent / "nothing"),
    }[make]
    (top.parent / "planted").symlink_to(victim)
    out = call(policy, "berth-alice", "code-dir", path)
    assert out.code == 21, out
    assert ids(victim) == (0, 0, 0o755) and ids(victim / "d") == (0, 0, 0o755)


def test_another_tenants_tree_is_not_handed_over(base: Path, policy: LauncherPolicy) -> None:
    top = stormdist(base)
    assert call(policy, "berth-bob", "code-dir", str(top)).code == 0
    out = call(policy, "berth-alice", "code-dir", str(top))
    assert out.code == 255 and f"belongs to uid {BOB}" in out.output[-1]
    assert ids(top)[0] == BOB
    out = call(policy, "berth-alice", "rmr", str(top))
    assert out.code == 255 and top.exists()


def test_a_directory_swapped_for_a_link_during_the_walk_changes_nothing_outside(
        base: Path, policy: LauncherPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race Storm's launcher loses: a worker renames a directory and puts a link in its place
    between two steps. berth holds descriptors, so what it changes is what it saw."""
    from berth._node import stormtrees

    top = stormdist(base)
    victim = base / "victim"
    victim.mkdir()
    (victim / "file").write_text("x")
    real = stormtrees._Permissions.scan

    def swap(self: Any, fd: int, dev: int, shown: str, depth: int, room: int) -> Any:
        found = real(self, fd, dev, shown, depth, room)
        if depth == 2 and (top / "resources" / "sub").is_dir() and not (top / "resources" / "sub").is_symlink():
            os.rename(top / "resources" / "sub", top / "moved")
            (top / "resources" / "sub").symlink_to(victim)
        return found

    monkeypatch.setattr(stormtrees._Permissions, "scan", swap)
    out = call(policy, "berth-alice", "code-dir", str(top))
    assert out.code == 255 and "was replaced" in out.output[-1]
    assert ids(victim) == (0, 0, 0o755) and ids(victim / "file") == (0, 0, 0o644)


# -- rmr -------------------------------------------------------------------------------------------------

def test_rmr_deletes_the_tree_and_never_follows_a_link(base: Path, policy: LauncherPolicy) -> None:
    worker = base / "local" / "workers" / "w1"
    (worker / "tmp" / "deep").mkdir(parents=True)
    victim = base / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    (worker / "tmp" / "to-victim").symlink_to(victim)
    (worker / "tmp" / "deep" / "f").write_text("x")
    os.lchown(worker, ALICE, TEAM)
    out = call(policy, "berth-alice", "rmr", str(worker))
    assert out.code == 0 and not worker.exists()
    assert (victim / "keep").read_text() == "keep"
    assert call(policy, "berth-alice", "rmr", str(worker)).code == 0  # missing: nothing to do, as Storm


def test_rmr_of_a_link_unlinks_it(base: Path, policy: LauncherPolicy) -> None:
    workers = base / "local" / "workers"
    workers.mkdir(parents=True)
    victim = base / "victim"
    victim.mkdir()
    (workers / "w2").symlink_to(victim)
    assert call(policy, "berth-alice", "rmr", str(workers / "w2")).code == 0
    assert not os.path.lexists(workers / "w2") and victim.is_dir()


def test_rmr_under_a_link_on_the_way_is_refused(base: Path, policy: LauncherPolicy) -> None:
    workers = base / "local" / "workers"
    workers.mkdir(parents=True)
    victim = base / "victim"
    (victim / "tmp").mkdir(parents=True)
    (workers / "w3").symlink_to(victim)
    out = call(policy, "berth-alice", "rmr", str(workers / "w3" / "tmp"))
    assert out.code == 21 and (victim / "tmp").is_dir()


def test_rmr_in_another_users_cache_is_refused(base: Path, policy: LauncherPolicy) -> None:
    other = base / "local" / "supervisor" / "usercache" / "berth-bob" / "filecache"
    other.mkdir(parents=True)
    assert call(policy, "berth-alice", "rmr", str(other)).code == 21
    assert other.is_dir()
    assert call(policy, "berth-bob", "rmr", str(other)).code == 0 and not other.exists()


# -- profiler ---------------------------------------------------------------------------------------------

def test_profiler_runs_the_script_in_the_workers_container(base: Path, policy: LauncherPolicy) -> None:
    arts = base / "log" / "workers-artifacts" / TOPO / "6700"
    arts.mkdir(parents=True)
    script = arts / "storm-worker-script.sh"
    script.write_text("#!/bin/bash\nexec true\n")
    workers = FakeWorkers([state("w-bob", "berth-bob", topology=TOPO, port=6701), state("w1", "berth-alice")],
                          ExecResult(exit_code=3, output=b"line 1\nline 2\n"))
    out = call(policy, "berth-alice", "profiler", str(arts), str(script), workers=workers)
    assert (out.code, out.output[2:]) == (3, ["line 1", "line 2"])
    assert workers.calls == [("w1", ["bash", str(script)])]


@pytest.mark.parametrize(("who", "where", "code"), [
    ("berth-bob", "arts", 7),        # not bob's worker
    ("berth-alice", "other-port", 7),  # no worker there
    ("berth-alice", "stormdist", 21),
])
def test_profiler_only_in_the_users_own_running_worker(base: Path, policy: LauncherPolicy, who: str, where: str,
                                                       code: int) -> None:
    arts = base / "log" / "workers-artifacts" / TOPO / ("6799" if where == "other-port" else "6700")
    if where == "stormdist":
        arts = stormdist(base) / "resources"
    arts.mkdir(parents=True, exist_ok=True)
    (arts / "s.sh").write_text("true\n")
    workers = FakeWorkers([state("w1", "berth-alice")])
    out = call(policy, who, "profiler", str(arts), str(arts / "s.sh"), workers=workers)
    assert out.code == code and workers.calls == []


def test_profiler_script_that_is_a_link_is_refused(base: Path, policy: LauncherPolicy) -> None:
    arts = base / "log" / "workers-artifacts" / TOPO / "6700"
    arts.mkdir(parents=True)
    (arts / "s.sh").symlink_to("/etc/shadow")
    workers = FakeWorkers([state("w1", "berth-alice")])
    out = call(policy, "berth-alice", "profiler", str(arts), str(arts / "s.sh"), workers=workers)
    assert out.code == 255 and workers.calls == []


# -- found in the adversarial pass -------------------------------------------------------------------------

def test_a_forged_owner_cannot_take_a_file_in_another_users_artifacts(base: Path, policy: LauncherPolicy) -> None:
    """The logviewer runs ``blob <log file>`` as the owner named in the worker's own worker.yaml,
    which the worker can rewrite: bob must not be given a file (even one Storm wrote) in alice's dir."""
    arts = base / "log" / "workers-artifacts" / TOPO / "6700"
    arts.mkdir(parents=True)
    (arts / "worker.yaml").write_text("topology.submitter.user: berth-bob\n")
    os.lchown(arts, ALICE, TEAM)
    os.lchown(arts / "worker.yaml", DAVE, TEAM)  # written by Storm's supervisor
    out = call(policy, "berth-bob", "blob", str(arts / "worker.yaml"))
    assert out.code == 255 and f"belongs to uid {ALICE}" in out.output[-1]
    assert ids(arts / "worker.yaml")[0] == DAVE
    assert call(policy, "berth-bob", "rmr", str(arts / "worker.yaml")).code == 255
    assert (arts / "worker.yaml").exists()
    assert call(policy, "berth-alice", "blob", str(arts / "worker.yaml")).code == 0


def test_a_tree_of_links_reports_a_bounded_number_of_lines(base: Path, policy: LauncherPolicy) -> None:
    top = stormdist(base)
    for i in range(300):
        (top / "resources" / f"l{i}").symlink_to("/etc/passwd")
    out = call(policy, "berth-alice", "code-dir", str(top))
    assert out.code == 0 and len(out.output) == 2 + 200 + 1
    assert out.output[-1] == "… and 100 more left alone"


def test_a_command_stops_when_its_time_is_up(base: Path, policy: LauncherPolicy,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    top = stormdist(base)
    for i in range(5000):
        (top / "resources" / f"f{i}").write_text("")
    monkeypatch.setattr(launcher, "WORK_S", -1.0)
    out = call(policy, "berth-alice", "code-dir", str(top))
    assert out.code == 255 and "not set up in the time allowed" in out.output[-1]
    out = call(policy, "berth-alice", "rmr", str(top))
    assert out.code == 255 and "not removed in the time allowed" in out.output[-1] and top.exists()


def test_a_mount_point_in_a_tree_is_not_crossed(base: Path, policy: LauncherPolicy) -> None:
    """A tree can hold another filesystem (an operator's mount, a bind mount): neither its files
    are given away nor deleted; code-dir says so, rmr stops there with an error."""
    top = stormdist(base)
    inner = top / "resources" / "mnt"
    inner.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inner)], capture_output=True).returncode:
        pytest.skip("cannot mount here")
    try:
        (inner / "kept").write_text("x")
        out = call(policy, "berth-alice", "code-dir", str(top))
        assert out.code == 0 and f"NOOP: {top}/…/mnt (a mount point: not crossed)" in out.output
        assert ids(inner)[0] == 0 and ids(inner / "kept")[0] == 0
        out = call(policy, "berth-alice", "rmr", str(top))
        assert out.code == 255 and "a mount point" in out.output[-1]
        assert (inner / "kept").read_text() == "x"
    finally:
        subprocess.run(["umount", "-l", str(inner)], check=True)


def test_rmr_of_a_tree_deleted_meanwhile_is_done(base: Path, policy: LauncherPolicy,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Storm's supervisor can delete one tree from two threads at once: the one that finds it gone
    part way has done its job (exit 0, as Storm's rmr of a missing path), not failed."""
    from berth._exceptions import CleanupError
    from berth._node import stormtrees

    worker = base / "local" / "workers" / "w9"
    (worker / "tmp").mkdir(parents=True)

    def racing(pfd: int, name: str, shown: str, deadline: float | None = None) -> None:
        shutil.rmtree(worker)
        raise CleanupError("directories", f"cannot remove {shown}: No such file or directory")

    monkeypatch.setattr(stormtrees, "remove_at", racing)
    assert call(policy, "berth-alice", "rmr", str(worker)).code == 0
