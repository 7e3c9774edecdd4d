"""/healthz's probe of the runtime: the last answer at once, "unresponsive" once one is overdue,
one check at a time, and never a wait past the first answer. Time is a fake clock; a check that
hangs is one blocked on an event the test holds."""

from __future__ import annotations

import threading

from berth._service.probe import UNRESPONSIVE, Probe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_last_answer_at_once_and_unresponsive_while_one_is_overdue() -> None:
    clock, release, calls = Clock(), threading.Event(), []
    answered = threading.Event()

    def check() -> str:
        calls.append(clock.now)
        if len(calls) > 1:
            release.wait(30)
        answered.set()
        return "ok" if len(calls) == 1 else "shim unresponsive"

    probe = Probe(check, every=1.0, timeout=2.0, clock=clock)
    assert probe() == "ok" and calls == [100.0]  # the first call waits for the first answer
    assert probe() == "ok" and calls == [100.0]  # within `every`: not asked again
    answered.clear()
    clock.now += 1.0
    assert probe() == "ok" and len(calls) == 2  # asked again; the last answer meanwhile, no waiting
    clock.now += 1.5
    assert probe() == "ok" and len(calls) == 2  # still under way, not yet overdue, no second check
    clock.now += 1.0
    assert probe() == UNRESPONSIVE and len(calls) == 2  # overdue: said so, without waiting for it
    release.set()
    assert answered.wait(30)
    threads = [t for t in threading.enumerate() if t.name == "berth-health"]
    for t in threads:
        t.join(30)
    assert probe() == "shim unresponsive"  # what the check itself said, once it returned


def test_a_check_that_raises_is_an_answer() -> None:
    def check() -> str:
        raise OSError("the socket went away")

    assert Probe(check)() == "error: the socket went away"
