"""What one supervisor takes on, bounded: the node's maximum number of workers, wherever the
assignments come from (a file, the API, the cluster agent through ``set_assignments``, the state
saved by an earlier run), on the in-memory runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from berth._service.api import create_app
from berth._service.desired import STATE_FILE

from ._supfake import Harness, doc, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to made-up uids")


def started(base: Path, stop_all: list[Harness], **kw: Any) -> Harness:
    h = Harness(base, **kw).start()
    stop_all.append(h)
    return h


def over(rejected: Any) -> list[tuple[str | None, str | None]]:
    return [(r.worker_id, r.field) for r in rejected if "supervisor.max_workers" in r.reason]


def test_the_default_maximum_is_set_and_bounded() -> None:
    from berth._core.serviceconfig import SupervisorSection

    assert SupervisorSection().max_workers == 256
    with pytest.raises(ValueError):
        SupervisorSection(max_workers=0)
    with pytest.raises(ValueError):
        SupervisorSection(max_workers=4097)


def test_entries_past_the_maximum_are_rejected_naming_the_field(base: Path, stop_all: list[Harness]) -> None:
    h = started(base, stop_all, max_workers=3)
    rejected = h.sup.set_assignments(doc(*(spec(f"w{i}", 6700 + i) for i in range(5))))
    assert over(rejected) == [("w3", "workers"), ("w4", "workers")]
    assert [r.index for r in rejected] == [3, 4]
    assert "at most 3 workers" in rejected[0].reason
    assert sorted(h.sup.desired()) == ["w0", "w1", "w2"]
    h.running("w0", "w1", "w2")
    assert sorted(h.containers()) == ["w0", "w1", "w2"]
    # Workers already assigned keep their places: new entries are the ones refused, wherever they stand.
    rejected = h.sup.set_assignments(doc(spec("n1", 6710), spec("w2", 6702), spec("w0", 6700), spec("w1", 6701)))
    assert over(rejected) == [("n1", "workers")]
    assert sorted(h.sup.desired()) == ["w0", "w1", "w2"]
    assert [r.worker_id for r in h.sup.rejections()] == ["n1"]


def test_the_maximum_holds_for_the_api(base: Path, stop_all: list[Harness]) -> None:
    h = started(base, stop_all, max_workers=2)
    client = TestClient(create_app(h.sup))
    entries = [{"worker_id": f"a{i}", "topology_id": "wc-1", "port": 6700 + i, "user": "alice", "command": ["run"]}
               for i in range(3)]
    r = client.put("/assignments", json={"workers": entries})
    assert r.status_code == 422, r.text
    assert r.json()["accepted"] == ["a0", "a1"]
    [item] = r.json()["detail"]
    assert item["loc"] == ["body", "workers", 2, "workers"] and "supervisor.max_workers" in item["msg"]


def test_a_file_past_the_maximum_keeps_the_others_running(base: Path, stop_all: list[Harness]) -> None:
    path = base / "assign.yaml"
    path.write_text(json.dumps({"workers": [spec(f"f{i}", 6800 + i).model_dump(mode="json", exclude_defaults=True)
                                            for i in range(4)]}))
    h = started(base, stop_all, max_workers=3, path=str(path))
    h.running("f0", "f1", "f2")
    assert [(r.worker_id, r.field, r.source) for r in h.sup.rejections()] == [("f3", "workers", str(path))]


def test_a_saved_state_past_a_lowered_maximum_is_cut_to_it(base: Path, stop_all: list[Harness]) -> None:
    """The operator lowered max_workers and restarted berth: the maximum applies to what was saved too."""
    h = started(base, stop_all, max_workers=4)
    h.sup.set_assignments(doc(*(spec(f"w{i}", 6700 + i) for i in range(4))), version="v1")
    h.running("w0", "w1", "w2", "w3")
    h.sup.stop()
    again = started(base, stop_all, max_workers=2, fake=h.fake.restarted(), clock=h.clock)
    assert sorted(again.sup.desired()) == ["w0", "w1"]
    assert over(again.sup.rejections()) == [("w2", "workers"), ("w3", "workers")]
    again.watch.until(lambda: sorted(again.containers()) == ["w0", "w1"], "w2 and w3 removed")
    saved = json.loads(Path(again.config.state_dir, STATE_FILE).read_text())
    assert [w["spec"]["worker_id"] for w in saved["workers"]] == ["w0", "w1"]


def test_nothing_is_written_to_the_event_log_before_the_lock_is_held(base: Path, stop_all: list[Harness]) -> None:
    """The cluster agent sets its first document before the supervisor starts: a rejection then
    must not land in the event log of another supervisor that holds the node; it is written once
    this one holds the lock."""
    holder = started(base, stop_all)
    holder.sup.set_assignments(doc(spec("w1", 6700)))
    holder.running("w1")
    log = Path(holder.config.state_dir, "events.jsonl")
    before = log.read_bytes()
    second = Harness(base, fake=holder.fake.restarted(), clock=holder.clock)
    stop_all.append(second)
    rejected = second.sup.set_assignments(doc(spec("w1", 6700), spec("w9", 6709, user="bob")))
    assert [(r.worker_id, r.field) for r in rejected] == [("w9", "user")]
    assert log.read_bytes() == before  # not this supervisor's log to write, yet
    holder.sup.stop()
    second.start()
    lines = [json.loads(x) for x in log.read_bytes()[len(before):].splitlines()]
    assert [x["worker_id"] for x in lines if "assignment rejected" in x["reason"]] == ["w9"]


def test_what_the_desired_state_may_take_is_bounded_in_bytes(base: Path, stop_all: list[Harness],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tenant's PUT is at most 16 MiB, but they add up, and the whole desired state is written
    to supervisor.json on every change: it is bounded as a whole (by default as one document)."""
    from berth._service import assignments, supervisor

    assert supervisor.MAX_DESIRED_BYTES == assignments.MAX_ASSIGNMENTS_BYTES
    monkeypatch.setattr(supervisor, "MAX_DESIRED_BYTES", 3000)
    h = started(base, stop_all)
    big = {"PAD": "x" * 1000}
    h.sup.set_assignments(doc(spec("w0", 6700, env=big), spec("w1", 6701, env=big)))
    rejected = h.sup.set_assignments(doc(spec("n0", 6710, env=big), spec("w0", 6700, env=big),
                                         spec("w1", 6701, env=big), spec("n1", 6711)))
    assert [(r.worker_id, r.field) for r in rejected] == [("n0", "workers")]
    assert "more than 3000 bytes" in rejected[0].reason
    assert sorted(h.sup.desired()) == ["n1", "w0", "w1"]  # a small entry still fits


def test_a_directory_of_too_many_files_changes_nothing(base: Path, stop_all: list[Harness],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from berth._service import assignments

    monkeypatch.setattr(assignments, "MAX_FILES", 2)
    d = base / "assign.d"
    d.mkdir()
    for i in range(2):
        (d / f"{i}.json").write_text(json.dumps({"workers": [spec(f"w{i}", 6700 + i).model_dump(mode="json")]}))
    h = started(base, stop_all, path=str(d))
    h.running("w0", "w1")
    for name in ("2.json", "3.json"):
        (d / name).write_text(json.dumps({"workers": []}))
    (d / "0.json").unlink()  # three files now: w0's removal is not applied either
    h.sup.reload()
    assert sorted(h.sup.desired()) == ["w0", "w1"]
    assert [(r.source, r.field) for r in h.sup.rejections()] == [(str(d), "workers")]
