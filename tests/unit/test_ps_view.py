"""``berth ps`` for people: one line of the table per worker's facts, its id never cut, and each
last error in full on a line of its own under the table (in a column, a long one was squeezed
to one word per line even at 220 columns)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rich.console import Console

from berth._cli.views import _empty_row, ps_notes, ps_table, rejection_line
from berth._service.assignments import Rejection

ERR = ("launch failed: image: image 'registry.example.com:5000/team/wordcount:2.8.8-build17' is not in the "
       "engine; berth never pulls (build or load it on the node)")


def row(i: int) -> dict[str, Any]:
    return {**_empty_row(f"wordcount-production-2024-07-{i}", {
        "topology_id": "wordcount-production-2024-07", "port": 6840 + i, "user": "berth-alice",
        "image": "registry.example.com:5000/team/wordcount:2.8.8-build17"}),
        "supervisor_state": "crash-looping", "restarts": 12, "failures": 5, "next_start_in_s": 59.5,
        "last_exit": {"exit_code": 137, "signal": 9, "oom_killed": True}, "last_error": ERR,
        "assignment_version": "0x100000042", "state": "exited", "uptime": "1h02m03s",
        "how": "killed by SIGKILL, core dumped, out of memory"}


def test_ps_shows_whole_ids_and_the_last_errors_in_full_under_the_table() -> None:
    rows = [row(i) for i in range(3)]
    console = Console(width=220, record=True)
    console.print(ps_table(SimpleNamespace(config=SimpleNamespace(node=SimpleNamespace(name="n1"))), rows))  # type: ignore[arg-type]
    out = console.export_text()
    assert all(f"│ wordcount-production-2024-07-{i} │" in out for i in range(3)), out
    assert "last error" not in out and "never pulls" not in out
    assert ps_notes(rows) == [f"wordcount-production-2024-07-{i}: last error: {ERR}" for i in range(3)]
    assert ps_notes([{**rows[0], "last_error": None}]) == []


def test_a_rejection_reads_the_same_in_ps_as_in_the_supervisors_log() -> None:
    """One wording of a rejection (``Rejection.__str__``): ``ps`` only says whether it waits."""
    full = Rejection("api:ta", 2, "w3", "cpu_percent", "50% more would exceed", retried=True)
    bad = Rejection("/etc/berth/a.yaml", None, None, None, "not a mapping")
    assert str(full) == "api:ta[2] (w3): cpu_percent: 50% more would exceed"
    assert rejection_line(full.to_dict()) == "waiting for capacity: api:ta[2] (w3): cpu_percent: 50% more would exceed"
    assert rejection_line(bad.to_dict()) == "rejected: /etc/berth/a.yaml: not a mapping"
