"""berth-shim against real runc: exact statuses, one monitor per node that outlives berth, in-place
upgrade, and a killed shim whose successor reports what it could not see as lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import LaunchError, Node, NodeConfig
from berth._runtimes.runc.runtime import RuncRuntime
from berth._runtimes.runc.shimclient import ShimClient

from ._helpers import WAIT, WAIT_FOR_GO, Exits, go, root_of, wait_file
from ._helpers import worker as spec
from .conftest import poll_until, purge_runc, tmpfs

pytestmark = pytest.mark.integration

READY_THEN_GO = "open('ready', 'w').close()\n" + WAIT_FOR_GO + "import sys\nsys.exit(int(open('go').read() or 0))\n"


def _shim(node: Node) -> ShimClient:
    rt = node.runtime
    assert isinstance(rt, RuncRuntime)
    return rt.shim


def _ready(node: Node, wid: str) -> None:
    wait_file(Path(node.config.node.local_dir, "workers", wid, "ready"), node, wid)


def test_exit_137_and_death_by_sigkill_are_different_things(runc_node: Node) -> None:
    got = Exits()
    runc_node.launch(spec("w-137", "raise SystemExit(137)"), on_exit=got)
    runc_node.launch(spec("w-sig", WAIT_FOR_GO), on_exit=got)
    runc_node.force_kill("w-sig")
    by = {r.worker_id: r for r in got.wait_for(2)}
    assert (by["w-137"].exit_code, by["w-137"].signal, by["w-137"].exact) == (137, None, True)
    assert (by["w-sig"].exit_code, by["w-sig"].signal, by["w-sig"].exact) == (137, 9, True)
    assert by["w-137"].how == "exit code 137" and by["w-sig"].how == "killed by SIGKILL"
    assert not by["w-137"].oom_killed and not by["w-sig"].oom_killed


def test_exits_that_come_before_the_pid_file_is_read_are_not_lost(runc_node: Node) -> None:
    got = Exits()
    for i in range(8):
        runc_node.launch(spec(f"w-fast{i}", f"raise SystemExit({i})"), on_exit=got)
    assert sorted((r.worker_id, r.exit_code) for r in got.wait_for(8)) == [(f"w-fast{i}", i) for i in range(8)]


def test_one_shim_per_node_detached_from_berth_and_outliving_it(runc_config: NodeConfig) -> None:
    node = Node(runc_config)
    node.launch(spec("w-live", READY_THEN_GO), on_exit=lambda r: None)
    _ready(node, "w-live")
    shim = _shim(node)
    pid = shim.pid()
    assert pid is not None and shim.start() == pid  # a second start finds the running one (the lock)
    status = Path(f"/proc/{pid}/status").read_text()
    ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    assert ppid != os.getpid() and os.getsid(pid) != os.getsid(0)
    assert Path(f"/proc/{pid}/cgroup").read_text() != Path("/proc/self/cgroup").read_text()
    hello = shim.hello()
    assert hello["threads"] == 1 and hello["containers"] == 1 and hello["rss_bytes"] < 30 * 2**20
    node.close()  # berth goes away; the worker and the shim do not
    again = Node(runc_config)
    assert again.inspect("w-live").running and _shim(again).pid() == pid
    got = Exits()
    again.recover()
    again.set_default_callback(got)
    go(again, "w-live", "5")
    rec = got.wait_for(1)[0]
    assert (rec.worker_id, rec.exit_code, rec.exact) == ("w-live", 5, True)
    again.close()


def test_upgrade_in_place_keeps_the_pid_and_the_exact_statuses(runc_node: Node) -> None:
    got = Exits()
    runc_node.launch(spec("w-up", READY_THEN_GO), on_exit=got)
    _ready(runc_node, "w-up")
    shim = _shim(runc_node)
    pid = shim.pid()
    shim.upgrade()
    poll_until(lambda: _execs(shim) == 1, "the shim to re-execute itself")
    assert shim.pid() == pid and shim.hello()["containers"] == 1
    go(runc_node, "w-up", "6")
    rec = got.wait_for(1)[0]
    assert (rec.exit_code, rec.signal, rec.exact, rec.status_lost) == (6, None, True, False)


def _execs(shim: ShimClient) -> int:
    try:
        return int(shim.hello()["execs"])
    except Exception:
        return -1  # between exec and listening again


def test_a_killed_shim_is_replaced_and_what_it_could_not_see_is_status_lost(runc_config: NodeConfig) -> None:
    node = Node(runc_config)
    for wid in ("w-a", "w-b"):
        node.launch(spec(wid, READY_THEN_GO), on_exit=lambda r: None)
        _ready(node, wid)
    shim = _shim(node)
    old = shim.pid()
    assert old is not None
    node.close()
    os.kill(old, signal.SIGKILL)
    poll_until(lambda: not shim.running(), "the old shim to be gone")
    b_pid = node.inspect("w-b").pid
    go(node, "w-b", "3")  # ends while no shim runs: nobody can see its status
    poll_until(lambda: b_pid is None or not Path(f"/proc/{b_pid}").exists()
               or Path(f"/proc/{b_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", "w-b to end")
    got = Exits()
    fresh = Node(runc_config, on_exit=got)
    report = fresh.recover()  # starts a new shim, which adopts w-a and finds w-b ended
    assert _shim(fresh).pid() not in (None, old)
    assert report.adopted == ["w-a"]
    lost = {r.worker_id: r for r in got.wait_for(1)}["w-b"]
    assert (lost.exit_code, lost.signal, lost.status_lost, lost.exact) == (None, None, True, False)
    assert lost.how.startswith("status lost")
    go(fresh, "w-a", "4")  # adopted, not its child: its end is seen, its status is not
    rec = next(r for r in got.wait_for(2) if r.worker_id == "w-a")
    assert rec.status_lost and rec.exit_code is None
    fresh.launch(spec("w-c", "raise SystemExit(8)"), on_exit=got)  # the new shim's own: exact again
    rec = next(r for r in got.wait_for(3) if r.worker_id == "w-c")
    assert (rec.exit_code, rec.exact) == (8, True)
    assert fresh.wait("w-c", WAIT).exit_code == 8
    fresh.close()


TERM_IGNORED = ("import signal, time\nsignal.signal(signal.SIGTERM, lambda *_: open('term', 'w').close())\n"
                "open('ready', 'w').close()\nwhile True: time.sleep(1)\n")


def test_a_grace_kill_survives_an_upgrade_even_once_its_caller_is_gone(runc_node: Node) -> None:
    """The SIGKILL due at the end of a grace period is the shim's promise, not its caller's: an
    upgrade (or a new shim) in the middle of the grace keeps it."""
    got = Exits()
    runc_node.launch(spec("w-grace", TERM_IGNORED), on_exit=got)
    _ready(runc_node, "w-grace")
    shim = _shim(runc_node)
    cid = runc_node.inspect("w-grace").container_id
    with socket.socket(socket.AF_UNIX) as s:  # a caller that asks and goes away (a berth killed mid-stop)
        s.connect(shim.socket_path)
        s.sendall(json.dumps({"op": "kill", "id": cid, "signal": 15, "grace": 1.0}).encode() + b"\n")
    wait_file(root_of(runc_node, "w-grace") / "term", runc_node, "w-grace")
    shim.upgrade()
    rec = got.of("w-grace")
    assert (rec.signal, rec.exact, rec.status_lost) == (9, True, False)


def test_stops_and_launches_under_way_while_the_shim_upgrades_all_succeed(runc_node: Node) -> None:
    got = Exits()
    runc_node.launch(spec("w-stop", TERM_IGNORED), on_exit=got)
    _ready(runc_node, "w-stop")
    shim = _shim(runc_node)
    errors: list[str] = []
    done = threading.Event()

    def stop() -> None:
        try:
            runc_node.kill("w-stop", 2.0)
        except Exception as exc:
            errors.append(f"kill: {exc!r}")

    def launch(k: int) -> None:
        i = k
        while not done.is_set():
            try:
                runc_node.launch(spec(f"w-up{i}", f"raise SystemExit({i % 100})", port=6701 + i), on_exit=got)
            except Exception as exc:
                errors.append(f"w-up{i}: {exc!r}")
            i += 3

    stopper = threading.Thread(target=stop)
    stopper.start()
    wait_file(root_of(runc_node, "w-stop") / "term", runc_node, "w-stop")
    launchers = [threading.Thread(target=launch, args=(k,)) for k in range(3)]
    for t in launchers:
        t.start()
    for n in range(1, 4):
        poll_until(lambda: len(got.records) >= 3 * n, "launches to go on")  # noqa: B023 - called at once
        shim.upgrade()
        poll_until(lambda: _execs(shim) == n, "the shim to re-execute itself")  # noqa: B023
    done.set()
    for t in [stopper, *launchers]:
        t.join(WAIT)
    assert errors == []
    assert (got.of("w-stop").signal, got.of("w-stop").exact) == (9, True)
    ups = [r for r in got.records if r.worker_id.startswith("w-up")]
    assert ups and all(r.exact and r.exit_code == int(r.worker_id[4:]) % 100 for r in ups)


@pytest.fixture
def tmpfs_state(base: Path) -> Iterator[Path]:
    """A state filesystem of 16 MiB (tmpfs: root gets ENOSPC like anyone once it is full)."""
    with tmpfs(base / "state", 16, "0700") as state:
        yield state
        purge_runc(state)


def _fill(path: Path) -> None:
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_the_shim_survives_a_full_state_disk_and_writes_its_exits_when_space_returns(
        runc_config: NodeConfig, tmpfs_state: Path) -> None:
    node = Node(runc_config)
    assert node.config.state_dir == str(tmpfs_state)
    node.launch(spec("w-full", READY_THEN_GO + "print('after')\n"), on_exit=lambda r: None)
    _ready(node, "w-full")
    shim = _shim(node)
    pid = shim.pid()
    filler = tmpfs_state / "filler"
    _fill(filler)
    with pytest.raises(LaunchError) as err:  # an exit could not be journalled: refused up front
        node.launch(spec("w-nospace", "pass", port=6701), on_exit=lambda r: None)
    assert err.value.step == "state" and "No space left" in err.value.reason
    assert not Path(runc_config.runtime_dir("runc"), "workers", "w-nospace").exists()
    go(node, "w-full", "5")
    poll_until(lambda: node.inspect("w-full").state != "running", "the exit to be seen")
    st = node.inspect("w-full")
    assert (st.state, st.exit_code) == ("exited", 5)  # from the shim's memory: never "running" again
    exit_file = Path(runc_config.runtime_dir("runc"), "workers", "w-full", "exit.json")
    assert not exit_file.exists()  # no space for it yet
    assert shim.pid() == pid and shim.hello()["containers"] == 0  # alive, though it could not log
    filler.unlink()
    poll_until(exit_file.exists, "the exit file to be written once there is space")
    assert json.loads(exit_file.read_text())["exit_code"] == 5
    assert node.exit_record("w-full") is not None and node.exit_record("w-full").exit_code == 5  # type: ignore[union-attr]
    node.cleanup("w-full")
    node.close()
    shim.stop()
    poll_until(lambda: not Path(f"/proc/{pid}").exists(), "the shim to stop")
    _fill(filler)
    again = shim.start()  # on a full disk: it cannot write its log, and that is not fatal
    assert again != pid and shim.hello()["pid"] == again
    filler.unlink()
    shim.stop()
    poll_until(lambda: not Path(f"/proc/{again}").exists(), "the shim to stop")
    assert shim.start() not in (pid, again)
    shim.stop()


@pytest.mark.parametrize("garbage", ['{"id": "c-bad", "pid": "not a number"}', '{"pid": 1}', "[1, 2]", "",
                                     '{"id": "c-bad", "pid": 1, "start_time": "x", "log_max_bytes": "y"}'])
def test_a_worker_dir_with_files_that_make_no_sense_is_left_alone_and_the_shim_serves_the_others(
        runc_node: Node, garbage: str) -> None:
    """A careless operator's hand edit, a damaged disk: one worker's files that cannot be understood
    must not keep the node's monitor from starting (it crashed on them, before it said ready)."""
    shim = _shim(runc_node)
    runc_node.launch(spec("w-ok", "raise SystemExit(4)"), on_exit=lambda r: None)
    assert runc_node.wait("w-ok", WAIT).exit_code == 4
    bad = Path(runc_node.config.runtime_dir("runc"), "workers", "w-bad")
    bad.mkdir(mode=0o700)
    (bad / "started.json").write_text(garbage)
    (bad / "launch.json").write_text(garbage)
    (bad / "init.pid").write_text("1\n")
    pid = shim.pid()
    shim.stop()
    poll_until(lambda: pid is None or not Path(f"/proc/{pid}").exists(), "the shim to stop")
    assert shim.start() != pid
    runc_node.launch(spec("w-after", "raise SystemExit(6)", port=6701), on_exit=lambda r: None)
    assert runc_node.wait("w-after", WAIT).exit_code == 6


def test_workers_that_end_while_the_shim_is_stopped_get_their_exact_status_once_it_answers(
        runc_node: Node) -> None:
    """A SIGSTOPped shim answers nothing: `ps` asks it once (bounded), then reads the files alone
    for a while, showing the ended workers as not yet known rather than a made-up status."""
    shim = _shim(runc_node)
    got = Exits()
    for i in range(3):
        runc_node.launch(spec(f"w-stp{i}", READY_THEN_GO, port=6700 + i), on_exit=got)
        _ready(runc_node, f"w-stp{i}")
    pids = [runc_node.inspect(f"w-stp{i}").pid for i in range(3)]
    shim_pid = shim.pid()
    assert shim_pid is not None and all(pids)
    os.kill(shim_pid, signal.SIGSTOP)
    try:
        for i in range(3):
            go(runc_node, f"w-stp{i}", str(20 + i))
        poll_until(lambda: all(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                               for p in pids), "the workers to end")  # zombies: the stopped shim cannot reap
        rows = {w.worker_id: w for w in runc_node.ps()}
        assert {w: (r.state, r.exit_code) for w, r in rows.items()} == {
            f"w-stp{i}": ("running", None) for i in range(3)}  # not known yet: never a made-up code
    finally:
        os.kill(shim_pid, signal.SIGCONT)
    assert sorted((r.worker_id, r.exit_code, r.exact) for r in got.wait_for(3)) == [
        (f"w-stp{i}", 20 + i, True) for i in range(3)]
    assert {w.worker_id: w.exit_code for w in runc_node.ps()} == {f"w-stp{i}": 20 + i for i in range(3)}
