"""What the cluster reads of a supervisor (issue 19), on the in-memory runtime: its applied
version means that the new workers run and the removed ones are gone."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ._supfake import WAIT, Harness, doc, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to made-up uids")


def test_the_applied_version_waits_for_replacements_and_removals(h: Harness) -> None:
    h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701)), version="v1")
    h.running("w1", "w2")
    h.watch.until(lambda: h.sup.applied_version() == "v1", "v1 applied")
    old = h.containers()
    held = {w: h.fake.hold_stops(w) for w in ("w1", "w2")}
    try:
        h.sup.set_assignments(doc(spec("w1", 6700, env={"GENERATION": "2"})), version="v2")
        h.watch.until(lambda: h.watch.state("w1") == "stopping" and h.watch.state("w2") == "stopping",
                      "the replacement of w1 and the removal of w2 to begin")
        assert h.sup.applied_version() is None
        held["w1"].set()
        h.watch.until(lambda: h.containers().get("w1") not in (None, old["w1"]), "w1's replacement to run")
        assert h.sup.applied_version() is None, "applied while w2 was still being stopped"
    finally:
        for gate in held.values():
            gate.set()
    h.watch.until(lambda: h.sup.applied_version() == "v2", "v2 applied")
    assert set(h.containers()) == {"w1"}


def test_the_engine_probe_never_waits_on_a_frozen_engine(base: Path) -> None:
    """/healthz and /metrics ask the probe: a listing that has not come back within its timeout is
    "not answering", said then; the last listing that did come back stays for the metrics."""
    from berth import Node
    from berth._runtimes.base import WorkerState
    from berth._runtimes.fake.runtime import FakeRuntime
    from berth._service.probe import NOT_ANSWERING, OK, EngineProbe

    from ._supfake import USERS, config
    from .conftest import FOUR_CPUS

    class Frozen(FakeRuntime):
        def __init__(self) -> None:
            super().__init__()
            self.thawed, self.listings = threading.Event(), 0
            self.thawed.set()

        def list_workers(self) -> list[WorkerState]:
            self.listings += 1
            self.thawed.wait()
            return super().list_workers()

    engine = Frozen()
    probe = EngineProbe(Node(config(base), runtime=engine, host=FOUR_CPUS, identities=lambda u: USERS[u]),
                        timeout_s=0.2)
    assert probe.look().state == OK and engine.listings == 1
    assert probe.look(max_age_s=3600).state == OK and engine.listings == 1  # a recent answer will do
    engine.thawed.clear()
    view = probe.look()
    assert view.state == NOT_ANSWERING and view.reason is not None and "has not come back" in view.reason
    assert probe.look().state == NOT_ANSWERING and engine.listings == 2  # one probe in flight, not one per question
    engine.thawed.set()
    with probe._cond:
        assert probe._cond.wait_for(lambda: probe._since is None, WAIT)
    assert probe.look().state == OK and engine.listings == 3


def test_a_worker_rejected_at_launch_and_then_unassigned_is_forgotten(h: Harness) -> None:
    h.fake.missing_images.add("img:2")
    h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701, image="img:2")))
    h.running("w1")
    h.watch.until(lambda: h.watch.state("w2") == "rejected", "w2 rejected at launch")
    assert [r.worker_id for r in h.sup.rejections()] == ["w2"]
    h.sup.set_assignments(doc(spec("w1", 6700)))
    # The pass that sees it unassigned may still find the launch that rejected it finishing (busy):
    # a later one forgets it, without anything else happening.
    h.watch.until(lambda: h.watch.states() == {"w1": "running"}, "w2 forgotten")
    assert h.sup.rejections() == [] and h.sup.counts()["rejected"] == 0
    assert h.sup.desired().keys() == {"w1"}


def test_log_lines_say_what_happened(base: Path, stop_all: list[Harness], caplog: pytest.LogCaptureFixture) -> None:
    """No "None -> None" for a rejection, no "exit code None" for a lost status, one line for an
    adopted worker, and no planned stop left in supervisor.json once its exit is handled."""
    import json
    import logging

    from berth._service.desired import STATE_FILE

    caplog.set_level(logging.INFO, "berth.supervisor")
    h = Harness(base).start()
    stop_all.append(h)
    h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701), spec("w3", 6702, image="not-allowed:1")))
    h.running("w1", "w2")
    lines = [r.getMessage() for r in caplog.records]
    rejected = [m for m in lines if m.startswith("w3:")]
    assert len(rejected) == 1 and rejected[0].startswith("w3: assignment rejected: "), rejected
    assert not [m for m in lines if "None ->" in m or "-> None" in m], lines

    h.fake.finish("w2", lost=True)  # it ended, and its monitor could not see how: the status is lost
    h.watch.until(lambda: h.watch.state("w2") != "running", "w2's lost exit to be handled")
    assert any(m.startswith("w2: running -> ") and "(exited: status lost" in m for m in
               (r.getMessage() for r in caplog.records)), [r.getMessage() for r in caplog.records]
    assert not [r.getMessage() for r in caplog.records if "exit code None" in r.getMessage()]

    h.clock.advance(1.0)  # its backoff
    h.sup.poke()
    h.running("w2")  # started again
    h.sup.set_assignments(doc(spec("w1", 6700)))  # w2 unassigned: a planned stop
    h.watch.until(lambda: set(h.containers()) == {"w1"} and "w2" not in h.watch.states(), "w2 stopped")
    # Its exit may come after its removal (the engine's event): once handled, the stop is forgotten.
    h.watch.until(lambda: json.loads(Path(h.config.state_dir, STATE_FILE).read_text())["planned"] == [],
                  "no planned stop left in supervisor.json")

    h.sup.stop()
    again = Harness(base, fake=h.fake.restarted(), clock=h.clock)
    stop_all.append(again)
    caplog.clear()
    again.start()
    again.watch.settle()
    about_w1 = [r.getMessage() for r in caplog.records if r.getMessage().startswith("w1:")]
    assert about_w1 == ["w1: pending -> running (adopted after restart)"], about_w1
