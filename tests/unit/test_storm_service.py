"""Issue 17 item 2: ``berth serve --storm`` on the in-memory runtime: launch once, never restart,
each exit kept (fsynced) until the plugin acknowledges it, exactly once across restarts of berth,
kill without waiting, exact-id liveness, cleanup; and the HTTP routes the plugin calls.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from berth import ExitRecord, PolicyError, WorkerSpec
from berth._cli.demo import wait_until
from berth._node.node import Node
from berth._runtimes.fake.runtime import FakeRuntime
from berth._service import storm_api
from berth._service.storm_api import create_storm_app
from berth._service.stormexits import ExitLedger
from berth._service.stormnode import StormService, cgroup_left_mb, mem_available_mb

from ._stormfake import DIRS, TOPO, storm_config, storm_node, storm_setup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns directories to made-up uids")


def spec(wid: str, port: int = 6700, **kw: Any) -> WorkerSpec:
    return WorkerSpec(worker_id=wid, topology_id=TOPO, port=port, user="alice", command=("java",), **kw)


def rec(wid: str, cid: str = "c1", code: int = 3) -> ExitRecord:
    return ExitRecord(worker_id=wid, container_id=cid, exit_code=code, signal=None, oom_killed=False,
                      started_at=None, finished_at=None, exact=True)


class Storm:
    """A StormService on the fake runtime, restartable on the same "engine" and state dir."""

    def __init__(self, base: Path) -> None:
        self.base, self.fake = base, FakeRuntime()
        self.svc = self._make(self.fake)

    def _make(self, fake: FakeRuntime) -> StormService:
        svc = StormService(storm_config(self.base), node=storm_node(self.base, fake), dirs=DIRS)
        svc.start()
        return svc

    def restart(self) -> StormService:
        self.svc.stop()
        self.fake = self.fake.restarted()
        self.svc = self._make(self.fake)
        return self.svc

    def launch(self, wid: str, port: int = 6700) -> str:
        root = storm_setup(self.svc.config, wid, port=port)
        return self.svc.launch(spec(wid, port), str(root)).container_id


@pytest.fixture
def storm(base: Path) -> Iterator[Storm]:
    s = Storm(base)
    yield s
    s.svc.stop()


# -- the ledger ----------------------------------------------------------------------------------

def test_the_ledger_keeps_one_exit_per_worker_durably_until_acked(tmp_path: Path) -> None:
    led = ExitLedger(str(tmp_path))
    led.load()
    assert led.add(rec("w1")) and not led.add(rec("w1", code=9))
    assert [r.exit_code for r in led.pending(10)] == [3]
    again = ExitLedger(str(tmp_path))
    again.load()  # what a restarted berth reads
    assert again.pending(10) == [rec("w1")]
    assert not again.ack("w1", "other-container") and again.ack("w1", "c1")
    third = ExitLedger(str(tmp_path))
    third.load()
    assert third.pending(10) == [] and third.known("w1") and third.acked_ids() == {"w1"}
    third.drop("w1")
    assert not (tmp_path / "storm-exits" / "w1.json").exists() and not third.known("w1")


def test_the_ledger_waits_for_an_exit_and_hands_them_out_oldest_first(tmp_path: Path) -> None:
    led = ExitLedger(str(tmp_path))
    led.load()
    assert led.wait(0.01, 10) == []
    got: list[list[ExitRecord]] = []
    t = threading.Thread(target=lambda: got.append(led.wait(60, 10)))
    t.start()
    led.add(rec("w2", "c2"))
    t.join(60)
    assert [r.worker_id for r in got[0]] == ["w2"]
    led.add(rec("w1", "c1"))
    assert [r.worker_id for r in led.pending(10)] == ["w2", "w1"] and len(led.pending(1)) == 1


def test_the_ledger_is_bounded_acked_exits_go_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    led = ExitLedger(str(tmp_path), max_entries=2)
    led.load()
    led.add(rec("w1", "c1"))
    led.add(rec("w2", "c2"))
    led.ack("w2", "c2")
    led.add(rec("w3", "c3"))
    assert sorted(os.listdir(tmp_path / "storm-exits")) == ["w1.json", "w3.json"]
    led.add(rec("w4", "c4"))
    assert [r.worker_id for r in led.pending(10)] == ["w3", "w4"]
    assert "the exit of w1 is dropped before Storm's plugin fetched it" in caplog.text


def test_an_unreadable_ledger_file_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "storm-exits"
    d.mkdir()
    (d / "w1.json").write_text("{half")
    (d / "w2.json").write_text(json.dumps({"exit": rec("w9").to_dict(), "seq": 1, "acked": False}))
    led = ExitLedger(str(tmp_path))
    led.load()
    assert led.pending(10) == [] and "w1.json cannot be read" in caplog.text and "names worker 'w9'" in caplog.text


# -- the service ---------------------------------------------------------------------------------

def test_an_exit_is_recorded_once_with_the_workers_code_and_never_restarted(storm: Storm) -> None:
    cid = storm.launch("w1")
    storm.fake.finish("w1", exit_code=3)
    [got] = storm.svc.ledger.wait(60, 10)
    assert (got.worker_id, got.container_id, got.exit_code) == ("w1", cid, 3)
    storm.fake.resubscribe()  # a reconnect reconciles
    storm.svc.sweep()
    assert storm.svc.ledger.pending(10) == [got]
    assert [c for c in storm.fake.calls if c[0] == "start"] == [("start", "w1")]  # launched once


def test_exits_survive_a_restart_of_berth_and_are_not_reported_twice(storm: Storm) -> None:
    storm.launch("w1")
    storm.launch("w2", port=6701)
    storm.launch("w3", port=6702)
    storm.fake.finish("w1", exit_code=3)
    storm.svc.ledger.wait(60, 10)
    storm.svc.ledger.ack("w1", storm.svc.ledger.pending(1)[0].container_id)
    svc = storm.restart()
    storm.fake.finish("w2", signal=9, emit=False)  # ended while berth was down ...
    svc = storm.restart()  # ... found by the restarted one
    assert [(r.worker_id, r.exit_code, r.signal) for r in svc.ledger.pending(10)] == [("w2", 137, 9)]
    assert svc.ledger.known("w1") and not svc.all_dead("w3")  # adopted, not relaunched
    storm.fake.finish("w3", exit_code=0)
    wait_until(lambda: svc.ledger.known("w3"), "w3's exit", 60)
    assert [r.worker_id for r in svc.ledger.pending(10)] == ["w2", "w3"]


def test_kill_returns_at_once_and_force_kill_ends_it(storm: Storm) -> None:
    storm.launch("w1")
    gate = storm.fake.hold_stops("w1")
    storm.svc.kill("w1")  # returns although the stop is held
    storm.svc.kill("w1")  # one SIGTERM in flight per worker
    assert not storm.svc.all_dead("w1")
    storm.svc.force_kill("w1")
    assert storm.svc.all_dead("w1")
    gate.set()
    assert [r.signal for r in storm.svc.ledger.wait(60, 10)] == [9]
    storm.svc.force_kill("w1")
    storm.svc.force_kill("nope")  # gone: what was asked
    assert storm.svc.all_dead("nope")


def test_all_dead_is_by_exact_id(storm: Storm) -> None:
    storm.launch("w10")
    assert storm.svc.all_dead("w1") and not storm.svc.all_dead("w10")


def test_a_launch_must_go_into_storms_own_dir_with_storms_numa_zone(storm: Storm) -> None:
    root = storm_setup(storm.svc.config, "w1")
    with pytest.raises(PolicyError) as err:
        storm.svc.launch(spec("w1"), str(root) + "-elsewhere")
    assert err.value.field == "target_dir"
    with pytest.raises(PolicyError) as err:
        storm.svc.launch(spec("w1"), str(root), numa_id="0")
    assert err.value.field == "numa_id" and storm.svc.node.ps() == []


def test_a_worker_id_runs_once(storm: Storm) -> None:
    storm.launch("w1")
    storm.fake.finish("w1", exit_code=1)
    storm.svc.ledger.wait(60, 10)
    storm.svc.node.runtime.remove("w1")  # as if removed behind berth's back, the exit still known
    with pytest.raises(PolicyError) as err:
        storm.svc.launch(spec("w1"), str(Path(storm.svc.config.node.local_dir, "workers", "w1")))
    assert "ran already" in err.value.reason


def test_cleanup_removes_container_tree_and_exit(storm: Storm) -> None:
    storm.launch("w1")
    storm.fake.finish("w1", exit_code=2)
    storm.svc.ledger.wait(60, 10)
    storm.svc.cleanup("w1")
    assert storm.svc.node.ps() == [] and not storm.svc.ledger.known("w1")
    assert not Path(storm.svc.config.node.local_dir, "workers", "w1").exists()
    storm.svc.cleanup("w1")  # again: nothing left, no error


def test_a_worker_whose_dir_storm_deleted_is_stopped_and_removed(storm: Storm) -> None:
    storm.launch("w1")
    storm.launch("w2", port=6701)
    import shutil

    shutil.rmtree(Path(storm.svc.config.node.local_dir, "workers", "w1"))
    storm.svc.sweep()
    assert [w.worker_id for w in storm.svc.node.ps()] == ["w2"] and not storm.svc.all_dead("w2")


def test_memory_is_the_workers_and_minus_one_when_it_does_not_run(storm: Storm) -> None:
    storm.launch("w1")
    storm.fake.worker("w1").memory = 123456789
    assert storm.svc.memory_usage("w1") == 123456789 and storm.svc.memory_usage("nope") == -1


def test_free_memory_is_memavailable_or_what_the_parent_cgroup_has_left(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal: 8000000 kB\nMemFree: 100 kB\nMemAvailable: 4194304 kB\n")
    assert mem_available_mb(str(tmp_path)) == 4096
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(str(2 << 30))
    (v1 / "memory.usage_in_bytes").write_text(str(512 << 20))
    assert cgroup_left_mb(str(v1), 1) == 1536
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_left_mb(str(v1), 1) is None
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("5")
    assert cgroup_left_mb(str(v2), 2) is None and cgroup_left_mb(str(tmp_path / "gone"), 2) is None


# -- the routes ----------------------------------------------------------------------------------

def body(storm: Storm, wid: str, **kw: Any) -> dict[str, Any]:
    root = storm_setup(storm.svc.config, wid, port=kw.pop("port", 6700))
    return {"worker_id": wid, "topology_id": TOPO, "port": 6700, "user": "alice", "command": ["java", "-server"],
            "env": {"LD_LIBRARY_PATH": "/usr/lib"}, "memory_mb": 896, "cpu_percent": 100, "target_dir": str(root),
            **kw}


@pytest.fixture
def api(storm: Storm) -> TestClient:
    return TestClient(create_storm_app(storm.svc, require_peer=False))


def test_the_plugins_calls_from_launch_to_cleanup(storm: Storm, api: TestClient) -> None:
    assert api.get("/storm/v1/hello").json()["node"] == "n1"
    r = api.post("/storm/v1/workers", json=body(storm, "w1"))
    assert r.status_code == 201, r.json()
    assert (r.json()["memory_mb"], r.json()["cpu_percent"], r.json()["image"]) == (896, 100, "img:1")
    cid = r.json()["container_id"]
    assert api.get("/storm/v1/workers/w1/dead").json() == {"dead": False}
    assert api.get("/storm/v1/workers/w1/memory").json() == {"bytes": 1 << 20}
    assert api.get("/storm/v1/exits").json() == {"exits": []}
    assert api.post("/storm/v1/workers/w1/kill").status_code == 202
    [ex] = api.get("/storm/v1/exits", params={"wait": 30}).json()["exits"]
    assert (ex["worker_id"], ex["container_id"], ex["exit_code"], ex["signal"]) == ("w1", cid, 143, 15)
    assert api.post("/storm/v1/exits/ack", json={"exits": [{"worker_id": "w1", "container_id": "x"}]}).json() == \
        {"acked": []}
    assert api.post("/storm/v1/exits/ack", json={"exits": [{"worker_id": "w1", "container_id": cid}]}).json() == \
        {"acked": ["w1"]}
    assert api.get("/storm/v1/exits").json() == {"exits": []}
    assert api.get("/storm/v1/workers/w1/dead").json() == {"dead": True}
    assert api.post("/storm/v1/workers/w1/cleanup").status_code == 200 and storm.svc.node.ps() == []
    assert api.get("/healthz").json()["exits"] == {"pending": 0, "acked": 0}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"image": "evil/img:1"}, "image", "not in the node's allowed images"),
    ({"user": "nosuch"}, "user", "no such user"),
    ({"memory_mb": 8192}, "memory_mb", "4096"),
    ({"port": 0}, "port", "greater than or equal to 1"),
])
def test_a_bad_launch_is_a_clear_error_naming_the_field(storm: Storm, api: TestClient, change: dict[str, Any],
                                                         field: str, words: str) -> None:
    r = api.post("/storm/v1/workers", json={**body(storm, "w1"), **change})
    assert r.status_code == 409, r.json()
    [item] = r.json()["detail"]
    assert field in item["loc"] and words in item["msg"], item
    assert storm.svc.node.ps() == []


def test_ids_are_checked_and_bodies_bounded(api: TestClient) -> None:
    assert api.get("/storm/v1/workers/..%2Fx/dead").status_code in (404, 422)
    assert api.post("/storm/v1/workers/a b/kill").status_code == 422
    huge = {"worker_id": "w1", "command": ["x" * (storm_api.MAX_BODY + 1)]}
    assert api.post("/storm/v1/workers", json=huge).status_code == 413
    assert api.get("/storm/v1/exits", params={"wait": 31}).status_code == 422


def test_without_the_peers_credentials_the_routes_refuse(storm: Storm) -> None:
    strict = TestClient(create_storm_app(storm.svc))
    r = strict.get("/storm/v1/hello")
    assert r.status_code == 403 and "unix socket" in r.json()["detail"][0]["msg"]


def test_long_polls_are_bounded(storm: Storm, api: TestClient) -> None:
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(
        api.get("/storm/v1/exits", params={"wait": 30}).status_code)) for _ in range(storm_api.MAX_POLLS)]
    for t in threads:
        t.start()
    wait_until(lambda: storm.svc.ledger.waiting() == storm_api.MAX_POLLS, "the polls waiting", 60)
    assert api.get("/storm/v1/exits", params={"wait": 30}).status_code == 429
    assert api.get("/storm/v1/exits").status_code == 200  # a poll without wait is always answered
    storm.svc.ledger.add(rec("w9"))
    for t in threads:
        t.join(60)
    assert results == [200] * storm_api.MAX_POLLS


def test_node_is_a_storm_node(storm: Storm) -> None:
    assert isinstance(storm.svc.node, Node) and storm.svc.node.dirs is DIRS


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse down to (pytest's tmp_path lies under a 0700 one)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(dir="/var/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


def test_the_socket_must_be_reachable_by_storms_supervisor(open_dir: Path) -> None:
    """A careless operator's socket in berth's private state dir: the plugin could never connect
    (EACCES on every call); refused at start, saying why."""
    from berth._service.stormnode import socket_unreachable

    tmp_path = open_dir
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    why = socket_unreachable(str(state / "api.sock"), 0o660, 0, 3900, {3900})
    assert why is not None and f"{state} (mode 0700, uid 0, gid 0) lets it through no further" in why
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    assert socket_unreachable(str(run / "api.sock"), 0o660, 3900, 3900, {3900}) is None
    why = socket_unreachable(str(run / "api.sock"), 0o660, 0, 3900, {3900})
    assert why is not None and "mode 0660 and group 0" in why
    assert socket_unreachable(str(run / "api.sock"), 0o666, 0, 3900, {3900}) is None


def test_closing_the_ledger_answers_the_waiting_polls_at_once(tmp_path: Path) -> None:
    """``serve --storm`` stopping (SIGTERM, an upgrade) waited for every pending long poll to run
    out (30 s: the plugin's calls all failed meanwhile); closing the ledger answers them now."""
    led = ExitLedger(str(tmp_path))
    led.load()
    got: list[list[ExitRecord]] = []
    t = threading.Thread(target=lambda: got.append(led.wait(3600, 10)), daemon=True)
    t.start()
    wait_until(lambda: led.waiting() == 1, "the poll waiting", 60)
    led.close()
    t.join(60)
    assert not t.is_alive() and got == [[]]
    assert led.wait(3600, 10) == []  # closed: no wait at all


def test_a_node_whose_local_dir_moved_keeps_its_workers(storm: Storm) -> None:
    """Every worker's directory gone at once, the ``workers`` dir with them (a storm.local.dir
    changed in berth's config, a disk not mounted yet): that is not Storm forgetting its workers,
    and the sweep stops none of them."""
    import shutil

    storm.launch("w1")
    shutil.rmtree(Path(storm.svc.config.node.local_dir, "workers"))
    storm.svc.sweep()
    assert [w.worker_id for w in storm.svc.node.ps()] == ["w1"] and not storm.svc.all_dead("w1")


def test_one_workers_slow_cleanup_holds_up_no_other(storm: Storm) -> None:
    """A worker can make its tree slow to remove (millions of files); another topology's cleanup,
    and the sweep, go on meanwhile. An exit of a worker cleaned up meanwhile is never recorded again."""
    storm.launch("w1")
    storm.launch("w2", port=6701)
    gate, entered = threading.Event(), threading.Event()
    real = storm.svc.node.dirs

    class Slow:
        def prepare(self, plan: Any, made: Any) -> None:
            real.prepare(plan, made)

        def remove(self, config: Any, worker_id: str) -> None:
            if worker_id == "w1":
                entered.set()
                gate.wait(60)
            real.remove(config, worker_id)

    storm.svc.node.dirs = Slow()
    slow = threading.Thread(target=storm.svc.cleanup, args=("w1",), daemon=True)
    slow.start()
    assert entered.wait(60)
    def cleanup_and_sweep() -> None:
        storm.svc.cleanup("w2")
        storm.svc.sweep()

    other = threading.Thread(target=cleanup_and_sweep, daemon=True)
    other.start()
    other.join(60)
    alive = other.is_alive()
    gate.set()
    slow.join(60)
    assert not alive and storm.svc.node.ps() == []
    assert not storm.svc.ledger.known("w1") and not storm.svc.ledger.known("w2")


def test_the_end_a_cleanup_causes_is_not_kept(storm: Storm) -> None:
    storm.launch("w1")
    storm.svc.cleanup("w1")  # running: removed by force
    rec = ExitRecord(worker_id="w1", container_id="fake000001", exit_code=137, signal=9, oom_killed=False,
                     started_at=None, finished_at=None)
    storm.svc._on_exit(rec)  # its die event, arriving after the cleanup
    assert not storm.svc.ledger.known("w1")


def test_a_second_berth_for_the_same_node_is_refused(storm: Storm, base: Path) -> None:
    from berth._exceptions import SupervisorLocked

    second = StormService(storm_config(base), node=storm_node(base, storm.fake.restarted()), dirs=DIRS)
    with pytest.raises(SupervisorLocked) as err:
        second.start()
    assert f"pid {os.getpid()}" in err.value.reason and err.value.field == "state_dir"
