"""The supervisor's decisions on the in-memory runtime (issue 10 items 5-11; issue 9 item 1).

Each test drives one path deterministically: which call fails, when a worker ends, how long it
ran (the runtime's timestamps come from the test's clock), whether a stop is slow.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from berth import EngineError, LaunchError
from berth._core.serviceconfig import SupervisorSection
from berth._runtimes.base import ExitRecord
from berth._service.decisions import backoff_delay, decide_exit
from berth._service.phase import Phase

from ._supfake import Harness, doc, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to made-up uids")

S = SupervisorSection(backoff_base_s=1, backoff_cap_s=16, crashloop_after=3, healthy_after_s=30)


def exit_after(ran_s: float, code: int = 1, oom: bool = False) -> ExitRecord:
    return ExitRecord(worker_id="w", container_id="c", exit_code=code, signal=9 if oom else None, oom_killed=oom,
                      started_at="2026-01-01T00:00:00Z", finished_at=f"2026-01-01T00:{int(ran_s) // 60:02d}:"
                                                                      f"{int(ran_s) % 60:02d}Z")


# -- pure rules ---------------------------------------------------------------------------------

def test_backoff_doubles_and_is_capped_once_crash_looping() -> None:
    assert [backoff_delay(n, S) for n in range(5)] == [0.0, 1.0, 2.0, 16.0, 16.0]


def test_a_refused_launch_waits_for_capacity_is_rejected_or_backs_off() -> None:
    from berth import CapacityError, PolicyError
    from berth._service.decisions import LaunchDecision, decide_launch_error

    room = CapacityError("cpu_percent", "100% more would exceed")
    assert decide_launch_error(room, 2, S) == LaunchDecision(
        Phase.NO_CAPACITY, "waiting for capacity: cpu_percent: 100% more would exceed", 2, None)  # no failure
    assert decide_launch_error(PolicyError("image", "not allowed"), 2, S) == LaunchDecision(
        Phase.REJECTED, "cannot launch as assigned: image: not allowed", 2, None)
    assert decide_launch_error(EngineError("engine", "down"), 1, S) == LaunchDecision(
        Phase.FAILED, "launch failed: engine: down", 2, 2.0)


def test_the_loop_sleeps_until_the_first_thing_due() -> None:
    from berth._service.slot import Entry, WorkerSlot
    from berth._service.slots import next_wait

    a, b, c = (WorkerSlot.for_entry(Entry(spec(w, 6700 + i), "test")) for i, w in enumerate(("wa", "wb", "wc")))
    a.phase, a.next_start = Phase.BACKOFF, 107.0
    b.phase, b.next_start = Phase.STALLED, 104.0
    c.phase, c.next_start = Phase.NO_CAPACITY, 101.0  # waits for room, not for a time
    x = WorkerSlot("x", stop_retry_at=103.0)  # a removal that failed, tried again then
    assert next_wait(100.0, 10.0, [a, b, c], 150.0) == 4.0
    b.busy = "stalled"
    assert next_wait(100.0, 10.0, [a, b, c, x], 150.0) == 3.0
    x.stop_retry_at = 90.0
    assert next_wait(100.0, 10.0, [x], 150.0) == 0.05


def test_a_long_run_resets_the_failures_whatever_its_exit_code() -> None:
    d = decide_exit(exit_after(31, code=1), failures=2, planned=False, s=S)
    assert (d.failures, d.delay, d.phase, d.cause) == (1, 1.0, Phase.BACKOFF, "crash")
    d = decide_exit(exit_after(31, code=0), failures=2, planned=False, s=S)
    assert (d.failures, d.delay, d.phase, d.cause) == (0, 0.0, Phase.EXITED, "exit")
    d = decide_exit(exit_after(5, code=1), failures=2, planned=False, s=S)
    assert (d.failures, d.delay, d.phase) == (3, 16.0, Phase.CRASH_LOOPING)
    d = decide_exit(exit_after(5, oom=True), failures=0, planned=False, s=S)
    assert d.cause == "oom"


def test_an_operators_stop_is_no_failure() -> None:
    d = decide_exit(exit_after(5, code=143), failures=2, planned=True, s=S)
    assert (d.failures, d.delay, d.phase, d.cause) == (2, 0.0, Phase.EXITED, "stop")


# -- the loop -----------------------------------------------------------------------------------

def test_reconcile_failures_back_off_and_log_once_per_change(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Item 5: an unreachable engine is retried with a growing wait, not in a busy loop."""
    h.sup.set_assignments(doc(spec("w1", 6700)))
    h.running("w1")
    h.fake.finish("w1", exit_code=1)
    h.watch.until(lambda: h.watch.state("w1") == "backoff", "w1 in backoff")
    h.clock.advance(100)  # its restart is due: the old code then waited 0 s between failing passes
    h.sup.loop.retry_base_s = 0.001
    caplog.set_level(logging.INFO, "berth.supervisor")
    h.fake.down = True
    h.sup.poke()
    h.watch.until(lambda: h.watch.failed_passes >= 6, "six failed passes")
    assert h.sup.loop.next_wait(ok=False) > 0
    h.fake.down = False
    h.clock.advance(100)  # whatever failed meanwhile is due again
    h.sup.poke()
    h.running("w1")
    failed = [r for r in caplog.records if "reconcile failed" in r.getMessage()]
    again = [r for r in caplog.records if "works again" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING and len(again) == 1


def test_the_retry_wait_grows_and_is_bounded(h: Harness) -> None:
    for n, want in ((1, 0.25), (2, 0.5), (3, 1.0), (6, 8.0), (7, 10.0), (50, 10.0)):
        h.sup.loop.pass_failures = n
        assert h.sup.loop.next_wait(ok=False) == want
    h.sup.loop.pass_failures = 0


def test_a_slow_stop_does_not_hold_up_the_others(h: Harness) -> None:
    """Item 6: a stop that takes its whole grace runs beside the other work, not before it."""
    h.sup.set_assignments(doc(spec("slow", 6700), spec("w2", 6701)))
    h.running("slow", "w2")
    gate = h.fake.hold_stops("slow")
    h.sup.set_assignments(doc(spec("w2", 6701)))
    h.watch.until(lambda: h.watch.state("slow") == "stopping", "the stop of slow under way")
    h.sup.set_assignments(doc(spec("w3", 6702)))  # while slow's stop is held
    h.running("w3")
    h.watch.until(lambda: "w2" not in h.containers(), "w2 removed")
    assert "slow" in h.containers() and h.sup.status("slow").busy == "stop"
    h.sup.loop.last_pass = h.clock() - h.config.supervisor.stale_after_s - 1
    assert h.sup.stale()  # no pass for stale_after_s: /healthz says degraded
    h.watch.settle()
    assert not h.sup.stale()  # passes go on while the stop is held
    gate.set()
    h.watch.until(lambda: "slow" not in h.containers(), "slow removed")


def test_an_operator_kill_restarts_at_once_and_is_no_failure(h: Harness) -> None:
    """Item 7."""
    h.sup.set_assignments(doc(spec("w1", 6700)))
    h.running("w1")
    first = h.containers()["w1"]
    gate = h.fake.hold_stops("w1")
    h.sup.kill("w1", grace_s=5)  # returns at once: the stop goes on in the pool
    assert h.containers()["w1"] == first
    gate.set()
    h.watch.until(lambda: h.containers().get("w1") not in (None, first), "w1 restarted")
    st = h.sup.status("w1")
    assert st.last_exit is not None and (st.failures, st.restarts, st.last_exit.exit_code) == (0, 1, 143)
    assert h.watch.exits() == [("w1", "stop")]


def test_a_changed_assignment_applies_at_once_to_a_crash_looping_worker(h: Harness) -> None:
    """Item 9."""
    h.sup.set_assignments(doc(spec("w1", 6700)))
    for n in range(1, 4):
        h.running("w1")
        h.fake.finish("w1", exit_code=2)
        h.watch.until(lambda: h.sup.status("w1").failures == n, f"failure {n}")  # noqa: B023
        h.clock.advance(2 if n < 3 else 0)
        h.sup.poke()
    assert h.sup.status("w1").phase == "crash-looping"
    h.sup.set_assignments(doc(spec("w1", 6700, memory_mb=64)))  # the fix, 16 s before the next try
    h.running("w1")
    st = h.sup.status("w1")
    assert st.spec.memory_mb == 64 and st.failures == 0


def test_an_assignment_that_can_never_launch_is_rejected_not_retried(h: Harness) -> None:
    """Item 10: a missing image, and two users in one topology."""
    h.fake.missing_images.add("img:2")
    rejected = h.sup.set_assignments(doc(spec("ok", 6700), spec("noimg", 6701, image="img:2"),
                                         spec("other", 6702, user="bob")))
    assert [(r.worker_id, r.field) for r in rejected] == [("other", "user")]
    h.watch.until(lambda: h.watch.state("noimg") == "rejected", "noimg rejected")
    h.running("ok")
    for _ in range(3):
        h.clock.advance(100)
        h.watch.settle()
    assert sum(op == "image_present" and w == "img:2" for op, w in h.fake.calls) == 1
    assert {r.worker_id: r.field for r in h.sup.rejections()} == {"other": "user", "noimg": None}
    assert "berth never pulls" in (h.sup.status("noimg").last_error or "")
    h.fake.missing_images.clear()  # the operator loads the image, then assigns the worker again
    h.sup.set_assignments(doc(spec("ok", 6700), spec("noimg", 6701, image="img:2")))
    h.running("noimg")


def test_a_failing_worker_never_stops_the_others(h: Harness, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Issue 9 item 1: its removal fails, its launch raises, the engine errors for that one id."""
    h.sup.set_assignments(doc(spec("gone", 6700), spec("w1", 6701)))
    h.running("gone", "w1")
    h.fake.fail_next("remove", EngineError("engine", "remove: device or resource busy"), worker_id="gone")
    real = h.node.launch

    def launch(s: Any, on_exit: Any = None, held: Any = ()) -> Any:
        if s.worker_id == "boom":
            raise RecursionError("maximum recursion depth exceeded")
        return real(s, on_exit, held)

    monkeypatch.setattr(h.node, "launch", launch)
    h.fake.fail_next("inspect", EngineError("engine", "inspect: 500 server error"), worker_id="flaky")
    caplog.set_level(logging.WARNING, "berth.supervisor")
    h.sup.set_assignments(doc(spec("w1", 6701), spec("boom", 6702), spec("flaky", 6703), spec("w4", 6704)))
    h.running("w4")
    h.watch.until(lambda: h.watch.state("boom") == h.watch.state("flaky") == h.watch.state("gone") == "failed",
                  "boom, flaky and gone failed")
    assert "RecursionError" in (h.sup.status("boom").last_error or "")
    assert "inspect: 500" in (h.sup.status("flaky").last_error or "")
    assert "remove: device or resource busy" in (h.sup.status("gone").last_error or "")
    warned = {r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert {"boom", "flaky", "gone"} <= warned
    h.clock.advance(100)  # each is retried: the stop of 'gone' and the launch of 'flaky' now work
    h.sup.poke()
    h.running("flaky")
    h.watch.until(lambda: "gone" not in h.containers() and "gone" not in h.watch.states(), "gone removed")
    # boom is retried too (and fails again): its launch runs in the pool, so wait for it, not for a pass
    h.watch.until(lambda: h.sup.status("boom").failures >= 2, "boom retried")
    assert h.watch.state("w1") == "running"


def test_metrics_label_exits_by_worker_and_cause(h: Harness) -> None:
    """Item 11."""
    from prometheus_client.parser import text_string_to_metric_families

    from berth._service.metrics import Metrics

    m = Metrics(h.sup)
    h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701)))
    h.running("w1", "w2")
    h.fake.finish("w1", exit_code=3)
    h.watch.until(lambda: h.watch.state("w1") == "backoff", "w1 in backoff")
    h.clock.advance(2)
    h.sup.poke()
    h.watch.until(lambda: h.sup.status("w1").restarts == 1, "w1 restarted")
    h.running("w1")
    h.sup.set_assignments(doc(spec("w1", 6700)))  # w2: a planned stop, not a crash
    h.watch.until(lambda: "w2" in h.watch.forgotten(), "w2 gone")
    text = m.render().decode()
    assert "_created" not in text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    exits = {(s.labels["worker"], s.labels["cause"]): s.value for s in fams["berth_exits"].samples}
    assert exits == {("w1", "crash"): 1.0}  # w2's series went with w2
    assert {s.labels["worker"]: s.value for s in fams["berth_restarts"].samples} == {"w1": 1.0}
    assert {s.labels["code"]: s.value for s in fams["berth_exit_codes"].samples} == {"3": 1.0}


def test_launch_errors_classified() -> None:
    from berth import PolicyError
    from berth._service.decisions import permanent

    assert permanent(LaunchError("image", "no such image"))
    assert permanent(PolicyError("image", "not allowed"))
    assert not permanent(LaunchError("start", "engine said 500"))
    assert not permanent(EngineError("engine", "down"))


def test_launches_never_queue_behind_stops(tmp_path: Path) -> None:
    """With every stop slot taken by a stop that waits out its grace, a new worker still starts."""
    os.chmod(tmp_path, 0o755)
    h = Harness(tmp_path, parallel=1, parallel_stops=1).start()
    try:
        h.sup.set_assignments(doc(spec("slow", 6700)))
        h.running("slow")
        gate = h.fake.hold_stops("slow")
        h.sup.set_assignments(doc(spec("new", 6701)))
        h.running("new")
        assert "slow" in h.containers() and h.sup.status("slow").busy == "stop"
        gate.set()
        h.watch.until(lambda: "slow" not in h.containers(), "slow removed")
    finally:
        h.sup.stop()


def test_a_worker_whose_pid_1_is_stopped_is_stalled_then_replaced(tmp_path: Path) -> None:
    """Issue 9 item 8, the supervisor's part: a worker that ptrace-stops its own PID 1 can no longer
    end by itself (its exit would never be reported, its crash never restarted). It is shown as
    ``stalled``; if it does not resume within ``stalled_after_s`` it is killed and started again,
    as a failure with cause ``stalled``. One that resumes is running again, untouched."""
    os.chmod(tmp_path, 0o755)
    h = Harness(tmp_path, stalled_after_s=30.0).start()
    try:
        h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701)))
        h.running("w1", "w2")
        # Their launches must be over: a sweep skips a worker with an action in flight.
        h.watch.until(lambda: all(s.busy is None for s in h.sup.statuses()), "launches done")
        first = h.containers()["w1"]
        h.fake.worker("w1").main_stopped = True
        h.clock.advance(h.sup.loop.stall_sweep_s)
        h.watch.until(lambda: h.watch.state("w1") == "stalled", "w1 stalled")
        line = next(x for x in h.watch.lines if x["to"] == "stalled")
        assert "PID 1" in line["reason"] and "30" in line["reason"]
        assert "PID 1" in (h.sup.status("w1").last_error or "")
        h.fake.worker("w1").main_stopped = False  # resumed (SIGCONT from inside): nothing to do
        h.clock.advance(h.sup.loop.stall_sweep_s)
        h.watch.until(lambda: h.watch.state("w1") == "running", "w1 running again")
        assert h.containers()["w1"] == first and not any(op == "force_kill" for op, _ in h.fake.calls)

        h.fake.worker("w1").main_stopped = True
        h.clock.advance(h.sup.loop.stall_sweep_s)
        h.watch.until(lambda: h.watch.state("w1") == "stalled", "w1 stalled again")
        h.clock.advance(29)
        h.watch.settle()
        assert h.watch.state("w1") == "stalled" and h.containers()["w1"] == first  # not before its time
        h.clock.advance(1)
        h.sup.poke()
        h.watch.until(lambda: ("force_kill", "w1") in h.fake.calls, "w1 killed")
        h.watch.until(lambda: h.watch.state("w1") in ("backoff", "exited", "starting", "running"), "w1 ended")
        assert h.watch.exits() == [("w1", "stalled")]
        h.clock.advance(h.config.supervisor.backoff_cap_s)
        h.sup.poke()
        h.watch.until(lambda: h.containers().get("w1") not in (None, first), "w1 started again")
        st = h.sup.status("w1")
        assert (st.phase, st.failures, st.restarts) == ("running", 1, 1)
        assert st.last_exit is not None and st.last_exit.signal == 9 and h.watch.state("w2") == "running"
    finally:
        h.sup.stop()


def test_a_failed_look_at_a_running_worker_is_no_failure_of_it(h: Harness) -> None:
    """The stall check's inspect failing (the engine errs for that one id) says nothing of the worker."""
    h.sup.set_assignments(doc(spec("w1", 6700)))
    h.running("w1")
    h.watch.until(lambda: h.sup.status("w1").busy is None, "the launch done")
    h.fake.fail_next("inspect", EngineError("engine", "inspect: 500 server error"), worker_id="w1")
    h.clock.advance(h.sup.loop.stall_sweep_s)
    h.watch.settle()
    h.watch.settle()
    assert ("inspect", "w1") in h.fake.calls
    st = h.sup.status("w1")
    assert (st.phase, st.failures, st.last_error) == ("running", 0, None)
    assert not any(x["to"] == "failed" for x in h.watch.lines)


def test_an_exit_reported_before_its_launch_returned_waits_for_the_launch(base: Path) -> None:
    """A worker that ends at once can be reported while its launch is still returning. Its exit was
    handled at once, against a slot still ``starting`` (starting -> backoff); the launch then said
    ``running``, and the next pass started it again at once, its backoff ignored. An exit now waits
    for the action in flight for its worker, then is handled: running -> backoff, one launch."""
    from berth._runtimes.fake.runtime import FakeRuntime

    from ._supfake import WAIT, Clock

    clock = Clock()

    class EndsAtOnce(FakeRuntime):
        def start(self, worker_id: str) -> None:
            super().start(worker_id)
            if not taken.is_set():
                self.finish(worker_id, exit_code=3)
                assert taken.wait(WAIT)  # the supervisor has the exit: let its loop run two passes
                n = h.watch.passes
                h.sup.poke()
                h.watch.until(lambda: h.watch.passes > n, "a pass")
                h.sup.poke()
                h.watch.until(lambda: h.watch.passes > n + 1, "another pass")

    import threading

    taken = threading.Event()
    h = Harness(base, fake=EndsAtOnce(clock=clock), clock=clock)
    inner = h.sup.loop.exited

    def on_exit(rec: ExitRecord) -> None:
        inner(rec)
        taken.set()

    h.node.set_default_callback(on_exit)
    h.start()
    try:
        h.sup.set_assignments(doc(spec("w1", 6700)))
        h.watch.until(lambda: any(x["to"] == "backoff" for x in h.watch.lines)
                      and h.sup.status("w1").busy is None, "w1's exit handled and its launch over")
        h.watch.settle()
        h.watch.settle()
        assert [(x["from"], x["to"]) for x in h.watch.lines if x["worker_id"] == "w1"] == [
            ("pending", "starting"), ("starting", "running"), ("running", "backoff")]
        assert sum(op == "create" for op, _ in h.fake.calls) == 1
        assert h.watch.exits() == [("w1", "crash")]
        h.clock.advance(1.0)
        h.sup.poke()
        h.running("w1")
        assert h.sup.status("w1").restarts == 1
    finally:
        h.sup.stop()


def test_one_exit_reported_twice_at_once_counts_once(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's exit event and a pass's listing can hand the same exit over at the same moment
    (two threads). It is one exit: one Exited event, one failure towards the backoff. The second
    report arrives here while the first is being decided, the widest window there is."""
    from berth._service import reconcile
    from berth._service.bus import Event, Exited

    h.sup.set_assignments(doc(spec("w1", 6700)))
    h.running("w1")
    cid = h.containers()["w1"]
    ex = ExitRecord(worker_id="w1", container_id=cid, exit_code=3, signal=None, oom_killed=False,
                    started_at=None, finished_at=None, exact=True)
    seen: list[Event] = []
    h.sup.subscribe(lambda e: seen.append(e) if isinstance(e, Exited) else None)
    real = reconcile.decide_exit  # type: ignore[attr-defined]
    inner: list[bool] = []

    def deciding(*args: Any, **kwargs: Any) -> Any:
        if not inner:
            inner.append(True)
            h.sup.loop.handle_exit(ex)  # the other thread's report, in the middle of this one
        return real(*args, **kwargs)

    monkeypatch.setattr(reconcile, "decide_exit", deciding)
    h.sup.loop.handle_exit(ex)
    assert len(seen) == 1
    assert h.sup.status("w1").failures == 1
