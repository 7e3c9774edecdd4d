"""Assignment documents: tolerant per entry, strict about shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth._service.assignments import load_assignments, parse_document, signature


def w(wid: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"worker_id": wid, "topology_id": "tt", "port": port, "user": "alice", "command": ["x"], **kw}


def test_each_bad_entry_is_rejected_alone() -> None:
    out = parse_document({"workers": [w("wa", 1), w("wb", 0), {"worker_id": "wc"}, w("wa", 2), w("wd", 1), "x"]},
                         "f")
    assert list(out.specs) == ["wa"]
    got = [(r.index, r.worker_id, r.field) for r in out.rejected]
    assert got == [(1, "wb", "port"), (2, "wc", "topology_id"), (3, "wa", "worker_id"), (4, "wd", "port"),
                   (5, None, "workers[5]")]
    assert "assigned twice" in out.rejected[2].reason
    assert "already assigned to 'wa'" in out.rejected[3].reason


def test_document_shape_errors_reject_the_whole_source() -> None:
    for doc, field in (([1], "workers"), ({"workers": {}}, "workers"), ({"workers": [], "extra": 1}, "extra")):
        out = parse_document(doc, "f")
        assert out.specs == {} and out.broken_sources == {"f"}
        assert out.rejected[0].field == field


def test_directory_of_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("workers:\n  - {worker_id: wb, topology_id: tt, port: 2, user: u, command: [x]}\n")
    (tmp_path / "a.json").write_text('{"workers": [{"worker_id": "wa", "topology_id": "tt", "port": 1, '
                                     '"user": "u", "command": ["x"]}]}')
    (tmp_path / "c.yml").write_text("workers: [\n")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "empty.yaml").write_text("")
    out = load_assignments(tmp_path)
    assert list(out.specs) == ["wa", "wb"]
    assert out.sources == {"wa": str(tmp_path / "a.json"), "wb": str(tmp_path / "b.yaml")}
    # an empty file is not "no workers": it keeps its previous workers, like a broken one
    assert out.broken_sources == {str(tmp_path / "c.yml"), str(tmp_path / "empty.yaml")}
    assert "not valid YAML" in out.rejected[0].reason


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty document"),                      # `: > assign.yaml`, what a shell `>` does first
    ("---\n", "empty document"),
    ("null\n", "empty document"),
    ("{}\n", "empty document"),
    ("other: 1\n", "unknown key 'other'"),
    ("[]\n", "must be a mapping"),
    ("workers:\n  - {worker_id: w1, topology_id: t, port: 1, user: u, command: [x]}\n  - {worker_id: w2, top",
     "not valid YAML"),                           # a write cut half-way
])
def test_an_empty_null_or_partial_document_changes_nothing(tmp_path: Path, text: str, reason: str) -> None:
    f = tmp_path / "assign.yaml"
    f.write_text(text)
    out = load_assignments(f)
    assert out.specs == {} and out.broken_sources == {str(f)}
    assert reason in out.rejected[0].reason


def test_an_explicit_empty_list_is_a_drain(tmp_path: Path) -> None:
    f = tmp_path / "assign.yaml"
    f.write_text("workers: []\n")
    out = load_assignments(f)
    assert out.specs == {} and out.broken_sources == set() and out.rejected == []


def test_one_user_per_topology() -> None:
    from berth._core.spec import spec_from_mapping
    from berth._service.assignments import one_user_per_topology

    specs = {w: spec_from_mapping({"worker_id": w, "topology_id": "t1", "port": p, "user": u, "command": ["x"]})
             for w, p, u in (("a1", 1, "alice"), ("b1", 2, "bob"), ("a2", 3, "alice"))}
    [r] = one_user_per_topology(specs, {"b1": "f.yaml"})
    assert (r.source, r.worker_id, r.field) == ("f.yaml", "b1", "user")
    assert r.reason == "topology 't1' runs as 'alice' (worker 'a1'); one topology, one user"


def test_signature_changes_when_a_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("workers: []\n")
    before = signature(tmp_path)
    f.write_text("workers: []  # edited\n")
    assert signature(tmp_path) != before
    assert load_assignments(tmp_path / "missing").broken_sources == {str(tmp_path / "missing")}


def test_the_examples_parse() -> None:
    from berth import load_spec

    root = Path(__file__).resolve().parents[2] / "examples"
    assert list(load_assignments(root / "assignments.yaml").specs) == ["wc-1", "sess-1"]
    assert load_spec(root / "worker.yaml").memory_mb == 128


def test_a_deeply_nested_file_is_a_rejection_not_a_crash(tmp_path: Path) -> None:
    """The parser's RecursionError escaped load_assignments (and so a supervisor's reload)."""
    f = tmp_path / "assign.yaml"
    f.write_text("[" * 100_000 + "]" * 100_000)
    out = load_assignments(f)
    assert out.specs == {} and out.broken_sources == {str(f)}
    assert "not valid YAML: maximum recursion depth exceeded" in out.rejected[0].reason


def test_a_directory_is_read_within_one_budget_and_the_files_past_it_keep_their_workers(tmp_path: Path) -> None:
    """Each file is bounded; so are the files together (bytes, entries and files), in name order:
    a file past the budget is rejected as a whole (its previous workers stay), the others apply."""
    for name, wids in (("a.yaml", ["w1", "w2"]), ("b.yaml", ["w3"]), ("c.yaml", ["w4", "w5"]), ("d.yaml", ["w6"])):
        (tmp_path / name).write_text(yaml_doc([w(x, 10 + int(x[1:])) for x in wids]))
    out = load_assignments(tmp_path, max_entries=4)
    assert list(out.specs) == ["w1", "w2", "w3", "w6"]
    assert out.broken_sources == {str(tmp_path / "c.yaml")}
    assert [(r.source, r.field) for r in out.rejected] == [(str(tmp_path / "c.yaml"), "workers")]
    assert "more than 4 entries" in out.rejected[0].reason
    size = (tmp_path / "a.yaml").stat().st_size
    out = load_assignments(tmp_path, max_bytes=size + 1)
    assert list(out.specs) == ["w1", "w2"] and len(out.broken_sources) == 3
    assert f"more than {size + 1} bytes" in out.rejected[0].reason
    out = load_assignments(tmp_path, max_files=3)  # too many files: nothing changes (every file's workers stay)
    assert out.specs == {} and out.keep_all and [r.field for r in out.rejected] == ["workers"]
    assert "more than 3 assignment files; nothing is changed" in out.rejected[0].reason
    assert len(load_assignments(tmp_path, max_files=4).specs) == 6


def yaml_doc(workers: list[dict[str, Any]]) -> str:
    import json

    return json.dumps({"workers": workers})
