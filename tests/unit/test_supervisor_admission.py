"""Issue 18 item 5, the supervisor's part: an assignment past the node's capacity waits for
capacity (phase ``no-capacity``, shown in ps, the API and metrics), is retried when capacity
frees, and never takes the place of an assigned worker that is only between two runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from berth._service.api import create_app

from ._supfake import Harness, doc, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to made-up uids")

FULL = ("cpu_percent: 100% more would exceed the node's capacity of 200% (capacity.cpu_percent): its 2 worker(s) "
        "hold 200%")


def started(base: Path, stop_all: list[Harness], **kw: Any) -> Harness:
    h = Harness(base, capacity={"cpu_percent": 200}, **kw).start()
    stop_all.append(h)
    return h


def test_a_worker_past_the_capacity_waits_and_is_launched_when_capacity_frees(base: Path,
                                                                             stop_all: list[Harness]) -> None:
    h = started(base, stop_all)
    h.sup.set_assignments(doc(spec("w0", 6700), spec("w1", 6701), spec("w2", 6702)), version="v1")
    h.running("w0", "w1")
    h.watch.until(lambda: h.watch.state("w2") == "no-capacity", "w2 waiting for capacity")
    st = h.sup.status("w2")
    assert (st.last_error, st.failures, st.container_id) == (FULL, 0, None)
    assert [(r.worker_id, r.field, r.retried) for r in h.sup.rejections()] == [("w2", "cpu_percent", True)]
    assert h.sup.applied_version() == "v1"  # as far as it can be: w2 waits
    before = h.containers()
    h.watch.settle()
    h.watch.settle()
    assert [op for op, wid in h.fake.calls if wid == "w2" and op == "create"] == []  # no futile launches
    h.sup.set_assignments(doc(spec("w1", 6701), spec("w2", 6702)), version="v2")
    h.running("w2")
    assert h.containers()["w1"] == before["w1"]  # untouched
    assert h.sup.rejections() == [] and h.sup.status("w2").last_error is None


def test_a_worker_between_two_runs_keeps_its_place(base: Path, stop_all: list[Harness]) -> None:
    """w0 crashed and waits out its backoff: its place is its own, not the waiting w2's."""
    h = started(base, stop_all)
    h.sup.set_assignments(doc(spec("w0", 6700), spec("w1", 6701), spec("w2", 6702)))
    h.running("w0", "w1")
    h.watch.until(lambda: h.watch.state("w2") == "no-capacity", "w2 waiting")
    h.fake.finish("w0", exit_code=3)
    h.watch.until(lambda: h.watch.state("w0") == "backoff", "w0 in backoff")
    h.watch.settle()
    assert h.watch.state("w2") == "no-capacity"
    h.clock.advance(1.0)
    h.sup.poke()
    h.watch.until(lambda: h.watch.state("w0") == "running", "w0 restarted")
    h.watch.settle()
    assert h.watch.state("w2") == "no-capacity"


def test_api_and_metrics_show_who_waits_and_what_the_node_holds(base: Path, stop_all: list[Harness]) -> None:
    h = started(base, stop_all)
    client = TestClient(create_app(h.sup))
    entries = [spec(f"a{i}", 6700 + i).model_dump(mode="json", exclude_defaults=True) for i in range(3)]
    r = client.put("/assignments", json={"workers": entries})
    assert r.status_code == 200, r.text  # valid entries: accepted; a2 waits for capacity
    h.running("a0", "a1")
    h.watch.until(lambda: h.watch.state("a2") == "no-capacity", "a2 waiting")
    w = client.get("/workers/a2").json()
    assert (w["state"], w["last_error"]) == ("no-capacity", FULL)
    [rej] = client.get("/assignments").json()["rejected"]
    assert (rej["worker_id"], rej["field"], rej["retried"]) == ("a2", "cpu_percent", True)
    text = client.get("/metrics").text
    assert 'berth_workers{state="no-capacity"} 1.0' in text
    assert 'berth_node_capacity{resource="cpu_percent"} 200.0' in text
    assert 'berth_node_admitted{resource="cpu_percent"} 200.0' in text
    assert 'berth_node_admitted{resource="workers"} 2.0' in text


def test_a_stuck_holder_of_the_admission_lock_never_holds_up_the_loop(base: Path, stop_all: list[Harness]) -> None:
    """Another berth process stopped (Ctrl-Z) while it admits a worker: launches wait for it, in
    the pool, at most ADMISSION_WAIT_S; the reconcile loop goes on serving the other workers."""
    from berth._node.state import StateDir

    h = started(base, stop_all)
    h.sup.set_assignments(doc(spec("w0", 6700)))
    h.running("w0")
    with StateDir(h.config).admission():
        h.sup.set_assignments(doc(spec("w0", 6700), spec("w1", 6701)))
        h.watch.settle()
        h.watch.settle()  # passes complete while the lock is held
        h.fake.finish("w0", exit_code=3)
        h.watch.until(lambda: h.watch.state("w0") == "backoff", "w0's exit handled meanwhile")
    h.running("w1")
