"""The supervisor's persisted state and its lock, on the in-memory runtime (issue 10, items 1-4).

A restarted supervisor keeps the desired state it was given (by the API, a file or the cluster
agent), its version, restart counters and handled exits; it removes nothing until it knows the
desired state; and one node has one supervisor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from berth import StateError, SupervisorLocked
from berth._service.desired import STATE_FILE

from ._supfake import Harness, doc, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to made-up uids")


def restart(old: Harness, base: Path, stop_all: list[Harness], **kw: object) -> Harness:
    """SIGTERM-like: the old supervisor stops (workers keep running), a new one starts."""
    if old.sup.lock.held:
        old.sup.stop()
    new = Harness(base, fake=old.fake.restarted(), clock=old.clock, **kw)  # type: ignore[arg-type]
    stop_all.append(new)
    return new


def test_desired_state_set_through_the_api_survives_a_restart(base: Path, stop_all: list[Harness]) -> None:
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701)), version="v7")
    h.running("w1", "w2")
    before = h.containers()
    saved = json.loads(Path(h.config.state_dir, STATE_FILE).read_text())
    assert saved["version"] == "v7" and [w["spec"]["worker_id"] for w in saved["workers"]] == ["w1", "w2"]

    again = restart(h, base, stop_all).start()
    again.watch.settle()
    again.watch.settle()
    assert again.containers() == before  # adopted: not stopped, not removed, not relaunched
    assert sorted(again.sup.desired()) == ["w1", "w2"] and again.sup.version == "v7"
    assert again.watch.states() == {"w1": "running", "w2": "running"}
    assert again.sup.applied_version() == "v7"
    assert not any(op in ("stop", "remove", "create") for op, _ in again.fake.calls)


def test_nothing_is_removed_while_the_saved_state_cannot_be_read(base: Path, stop_all: list[Harness]) -> None:
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("w1", 6700)))
    h.running("w1")
    h.sup.stop()
    Path(h.config.state_dir, STATE_FILE).write_text('{"format": 1, "workers": [')  # torn by a disk error
    again = restart(h, base, stop_all).start()
    again.watch.settle()
    assert again.containers() == h.containers()
    assert again.sup.loaded is False and "cannot be used" in (again.sup.state_problem or "")
    assert Path(h.config.state_dir, STATE_FILE).read_text().endswith("[")  # not overwritten with nothing
    again.sup.set_assignments(doc())  # a new desired state, explicitly empty: now it is a drain
    again.watch.until(lambda: again.containers() == {}, "w1 removed")


def test_counters_and_handled_exits_survive_a_restart(base: Path, stop_all: list[Harness]) -> None:
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("bad", 6700)))
    for n in range(1, 4):  # crashloop_after = 3
        h.running("bad")
        h.fake.finish("bad", exit_code=1)
        h.watch.until(lambda: h.sup.status("bad").failures == n, f"failure {n}")  # noqa: B023
        if n < 3:
            h.clock.advance(16)
            h.sup.poke()
    st = h.sup.status("bad")
    assert (st.phase, st.restarts, st.next_start_in_s) == ("crash-looping", 2, 16.0)
    h.clock.advance(5)

    again = restart(h, base, stop_all).start()
    again.watch.settle()
    st = again.sup.status("bad")
    # the exit already handled is not handled again: still 3 failures, 2 restarts, the cap's rest
    assert (st.phase, st.failures, st.restarts, st.next_start_in_s) == ("crash-looping", 3, 2, 11.0)
    assert st.last_exit is not None and st.last_exit.exit_code == 1
    assert not any(op == "create" for op, _ in again.fake.calls)
    again.clock.advance(11)
    again.running("bad")
    assert again.sup.status("bad").restarts == 3


def test_a_second_supervisor_with_the_same_state_dir_refuses_to_start(base: Path, stop_all: list[Harness]) -> None:
    h = Harness(base).start()
    stop_all.append(h)
    second = Harness(base, fake=h.fake.restarted(), clock=h.clock)
    with pytest.raises(SupervisorLocked) as err:
        second.sup.start()
    assert f"pid {os.getpid()}" in str(err.value) and "supervisor.lock" in str(err.value)
    assert not second.sup.lock.held


def test_a_second_supervisor_of_the_same_node_name_on_the_engine_refuses(base: Path,
                                                                          stop_all: list[Harness]) -> None:
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("w1", 6700)))
    h.running("w1")
    other = base / "other"
    other.mkdir()
    os.chmod(other, 0o755)
    second = Harness(other, fake=h.fake.restarted(), clock=h.clock)
    with pytest.raises(SupervisorLocked) as err:
        second.sup.start()
    assert h.config.state_dir in str(err.value) and "w1" in str(err.value)
    assert not second.sup.lock.held  # released: the refusal leaves nothing held
    assert h.containers() == {"w1": h.containers()["w1"]}


def test_workers_of_another_supervisor_are_never_touched(base: Path, stop_all: list[Harness]) -> None:
    """Two supervisors that started before either had workers: each leaves the other's alone."""
    other = base / "other"
    other.mkdir()
    os.chmod(other, 0o755)
    a = Harness(base).start()
    stop_all.append(a)
    b = Harness(other, fake=a.fake.restarted(), clock=a.clock).start()
    stop_all.append(b)
    a.sup.set_assignments(doc(spec("a1", 6700)))
    a.running("a1")
    b.sup.set_assignments(doc(spec("b1", 6701)))
    b.running("b1")
    a.watch.settle()
    b.watch.settle()
    assert sorted(a.containers()) == ["a1", "b1"]
    assert a.sup.conflicts == {b.config.state_dir: ["b1"]} and b.sup.conflicts == {a.config.state_dir: ["a1"]}
    assert not any(op == "stop" for op, _ in a.fake.calls + b.fake.calls)


def test_assignments_set_before_start_win_over_the_saved_ones(base: Path, stop_all: list[Harness]) -> None:
    """The cluster agent sets its document before starting the supervisor: the saved (older) state
    must not replace it, and nothing is written before the lock is held."""
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701)), version="v1")
    h.running("w1", "w2")
    h.sup.stop()
    new = Harness(base, fake=h.fake.restarted(), clock=h.clock)
    stop_all.append(new)
    new.sup.set_assignments(doc(spec("w2", 6701), spec("w3", 6702)), version="v2")
    saved = json.loads(Path(h.config.state_dir, STATE_FILE).read_text())
    assert saved["version"] == "v1"  # not written without the lock
    new.start()
    new.running("w2", "w3")
    new.watch.until(lambda: "w1" not in new.containers(), "w1 removed")
    assert new.sup.version == "v2" and json.loads(Path(h.config.state_dir, STATE_FILE).read_text())["version"] == "v2"


def test_the_lock_is_taken_once_per_holder(tmp_path: Path) -> None:
    from berth._service.lock import SupervisorLock

    mine, other = SupervisorLock(str(tmp_path)), SupervisorLock(str(tmp_path))
    mine.acquire(what="serve")
    mine.acquire(what="serve")  # the API server, then the supervisor's start: one holder
    with pytest.raises(SupervisorLocked, match="what serve"):
        other.acquire()
    mine.release()
    other.acquire()
    assert other.held and not mine.held
    other.release()


def test_a_stop_cut_short_by_a_crash_of_berth_is_still_a_planned_stop(base: Path, stop_all: list[Harness]) -> None:
    """`serve --drain` SIGKILLed half-way: the engine goes on with the stops it was asked for, and the
    exits found after the restart are berth's own stops, not crashes (no failure, no backoff)."""
    import threading

    from berth import EngineError

    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("w1", 6700)))
    h.running("w1")
    gate = h.fake.hold_stops("w1")
    h.fake.fail_next("remove", EngineError("engine", "remove: berth was killed"), worker_id="w1")
    draining = threading.Thread(target=h.sup.stop, kwargs={"drain": True})
    draining.start()
    h.watch.until(lambda: h.watch.state("w1") == "stopping", "the drain's stop of w1 under way")
    h.sup.lock.release()  # SIGKILL: the kernel drops the lock; what the engine was asked to do goes on
    gate.set()
    draining.join()
    assert [w.state.value for w in h.fake.list_workers()] == ["exited"]

    again = restart(h, base, stop_all).start()
    again.running("w1")
    st = again.sup.status("w1")
    assert st.last_exit is not None and (st.failures, st.last_exit.signal) == (0, 15)
    assert again.watch.exits() == [("w1", "stop")]


def test_another_node_name_on_the_same_state_dir_refuses_to_start(base: Path, stop_all: list[Harness]) -> None:
    """Issue 18 item 8: a node configured with another name but the same (default) state dir
    adopted the first node's persisted desired state and launched its workers. The state dir is
    bound to the node that made it; another node is one line naming both, before anything."""
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("w1", 6700)), version="v1")
    h.running("w1")
    h.sup.stop()
    state = Path(h.config.state_dir)
    saved = (state / STATE_FILE).read_bytes()
    launches = sum(op == "create" for op, _ in h.fake.calls)
    other = Harness(base, fake=h.fake.restarted(), clock=h.clock, name="n2")
    stop_all.append(other)
    with pytest.raises(StateError) as err:
        other.sup.start()
    assert err.value.field == "node.name"
    assert err.value.reason == (f"{state} holds the state of node 'n1'; this config is node 'n2': give each "
                                "node its own node.state_dir (to rename this node, drain it, then remove "
                                f"{state}/node.json)")
    assert not other.sup.lock.held and other.sup.desired() == {}
    with pytest.raises(StateError):
        other.node.launch(spec("w9", 6709))
    assert (state / STATE_FILE).read_bytes() == saved
    assert sum(op == "create" for op, _ in h.fake.calls) == launches
    # The same node on another runtime is the same node (the demo runs on docker, then on runc).
    elsewhere = Harness(base, fake=h.fake.restarted(), clock=h.clock, runtime="process").start()
    stop_all.append(elsewhere)
    elsewhere.sup.stop()
    again = Harness(base, fake=h.fake.restarted(), clock=h.clock).start()  # the node itself starts as before
    stop_all.append(again)
    again.running("w1")


def test_a_state_dir_from_before_the_binding_is_bound_to_the_node_that_starts_on_it(
        base: Path, stop_all: list[Harness]) -> None:
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.stop()
    ident = Path(h.config.state_dir, "node.json")
    assert json.loads(ident.read_text()) == {"format": 1, "node": "n1"}
    ident.unlink()  # a state dir berth made before it wrote node.json
    second = restart(h, base, stop_all, name="n2").start()
    assert json.loads(ident.read_text())["node"] == "n2"
    assert second.sup.lock.held


def test_a_state_file_written_before_the_worker_slots_still_loads(base: Path, stop_all: list[Harness]) -> None:
    """A node upgraded in place keeps its desired state and counters: ``data/supervisor-format1.json``
    was written by the supervisor as it was before issue 20 (one worker crash-looping, one rejected
    at launch, one waiting for capacity, a tenant's source, a rejected entry, a planned stop)."""
    h = Harness(base, capacity={"cpu_percent": 300}, crashloop_after=3)
    stop_all.append(h)
    h.fake.missing_images.add("img:2")
    state = Path(h.config.state_dir)
    state.mkdir(parents=True, mode=0o700)
    (state / STATE_FILE).write_bytes((Path(__file__).parent / "data" / "supervisor-format1.json").read_bytes())
    h.start()
    assert list(h.sup.desired()) == ["crash", "gone", "run", "wait"] and h.sup.version == "v42"
    h.running("run")
    crash = h.sup.status("crash")
    # 48 s of its backoff were left when it was saved; never more than the cap (16 s) after a restart
    assert (crash.phase, crash.failures, crash.restarts, crash.next_start_in_s) == (
        "crash-looping", 3, 2, 16.0)
    assert crash.last_exit is not None and crash.last_exit.exit_code == 3 and crash.version == "v41"
    assert (h.sup.status("run").restarts, h.sup.status("gone").phase) == (1, "rejected")
    h.running("wait")  # no-capacity was saved, but this engine runs nothing else: it fits now
    assert [(r.source, r.index, r.worker_id, r.field) for r in h.sup.rejections()] == [
        ("api:team-a", 4, "w7", "port"), ("api:team-a", None, "gone", None)]
    assert not any(op == "create" and wid in ("gone", "crash") for op, wid in h.fake.calls)
    h.clock.advance(16)
    h.sup.poke()
    h.running("crash")
    assert h.sup.status("crash").restarts == 3
