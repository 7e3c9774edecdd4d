"""``signal <pid> <sig>`` (Storm's ``signal_container_as_user``): only processes of one of that
user's own workers, as the node sees them; a process group when the pid leads one; Storm's codes."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth._node.launcher import LauncherPolicy

from ..polling import poll_until
from .test_launcher_rules import FakeWorkers, call, make_policy, state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts processes as the test users")


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return []


class Tree:
    """A worker's process tree as berth-alice: a session leader (the worker's main process, as a
    container's init is) with two children in its process group."""

    def __init__(self, user: str = "berth-alice") -> None:
        pw = pwd.getpwnam(user)
        self.main = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], user=pw.pw_uid, group=pw.pw_gid,
                                     extra_groups=[], start_new_session=True)
        poll_until(lambda: len(children(self.main.pid)) == 2, "the worker's two children", timeout=30)
        self.kids = children(self.main.pid)

    def stop(self) -> None:
        for pid in (*self.kids, self.main.pid):
            if not gone(pid):
                os.kill(pid, 9)
        self.main.wait(timeout=30)


@pytest.fixture
def tree() -> Iterator[Tree]:
    t = Tree()
    yield t
    t.stop()


@pytest.fixture
def policy(base: Path) -> LauncherPolicy:
    return make_policy(base)


def test_a_workers_process_is_signalled(policy: LauncherPolicy, tree: Tree) -> None:
    workers = FakeWorkers([state("w1", "berth-alice", pid=tree.main.pid)])
    out = call(policy, "berth-alice", "signal", str(tree.kids[0]), "15", workers=workers)
    assert (out.code, out.output[-1]) == (0, f"Killing process {tree.kids[0]} with 15")
    poll_until(lambda: gone(tree.kids[0]), "the signalled child to end", timeout=30)
    assert not gone(tree.kids[1]) and not gone(tree.main.pid)


def test_a_group_leader_takes_its_group_with_it(policy: LauncherPolicy, tree: Tree) -> None:
    workers = FakeWorkers([state("w1", "berth-alice", pid=tree.main.pid)])
    out = call(policy, "berth-alice", "signal", str(tree.main.pid), "9", workers=workers)
    assert (out.code, out.output[-1]) == (0, f"Killing process group {tree.main.pid} with 9")
    tree.main.wait(timeout=30)
    poll_until(lambda: all(gone(p) for p in tree.kids), "the whole group to end", timeout=30)


def test_signal_zero_only_asks(policy: LauncherPolicy, tree: Tree) -> None:
    workers = FakeWorkers([state("w1", "berth-alice", pid=tree.main.pid)])
    assert call(policy, "berth-alice", "signal", str(tree.kids[1]), "0", workers=workers).code == 0
    assert not gone(tree.kids[1])


@pytest.mark.parametrize("whose", ["root", "not-a-worker", "other-user"])
def test_a_process_of_no_worker_of_the_user_is_not_signalled(policy: LauncherPolicy, tree: Tree, whose: str) -> None:
    """Storm's launcher, as the user, gets EPERM for another user's process (-1, exit 255); berth
    also refuses the user's own processes that are not in one of its workers."""
    loose = subprocess.Popen(["sleep", "300"], user=2101, group=2101, extra_groups=[])
    try:
        pid, user = {"root": (os.getpid(), "berth-alice"), "not-a-worker": (loose.pid, "berth-alice"),
                     "other-user": (tree.kids[0], "berth-bob")}[whose]
        workers = FakeWorkers([state("w1", "berth-alice", pid=tree.main.pid),
                               state("w2", "berth-bob", pid=tree.main.pid + 100000)])
        out = call(policy, user, "signal", str(pid), "9", workers=workers)
        assert out.code == 255 and "Operation not permitted" in out.output[-1]
        assert not gone(pid)
    finally:
        loose.kill()
        loose.wait(timeout=30)


def test_storms_codes_for_bad_pids_and_signals(policy: LauncherPolicy, tree: Tree) -> None:
    workers = FakeWorkers([state("w1", "berth-alice", pid=tree.main.pid)])
    with open("/proc/sys/kernel/pid_max") as fh:
        past = int(fh.read()) + 1
    for pid, code in (("0", 9), ("-5", 9), (str(past), 9), ("99999999999999999999", 9)):
        assert call(policy, "berth-alice", "signal", pid, "15", workers=workers).code == code, pid
    out = call(policy, "berth-alice", "signal", str(tree.kids[0]), "99", workers=workers)
    assert out.code == 8 and "Invalid argument" in out.output[-1] and not gone(tree.kids[0])
