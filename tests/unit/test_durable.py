"""The one durable writer: every step of a replacement, a failure at each, and the files that use it.

Whether data reached the disk cannot be seen without pulling the plug, so the steps are checked
as the kernel sees them (``strace``: the temporary file, its fsync, the rename, the directory's
fsync, in that order) and failures are real ones (a file size limit) or injected into the
``fsync`` step.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from berth._runtimes.runc.shim.durable import append_record, replace_file

ROOT = Path(__file__).resolve().parents[2]


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_a_replacement_is_whole_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    old = os.umask(0o077)
    try:
        replace_file(str(target), b"new" * 100_000, 0o644)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new" * 100_000
    assert target.stat().st_mode & 0o777 == 0o644 and _leftovers(tmp_path) == []


FSIZE_CHILD = r"""
import os, resource, signal, sys
from berth._runtimes.runc.shim.durable import replace_file
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    replace_file(sys.argv[1], b"x" * 100_000)
except OSError as exc:
    print(exc.errno)
"""


def test_a_half_written_temporary_file_never_replaces_the_real_one(tmp_path: Path) -> None:
    """A real failure half-way through the data: the kernel's file size limit (EFBIG after 4 KiB)."""
    target = tmp_path / "exit.json"
    target.write_text('{"exit_code": 3}')
    out = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(target)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == str(errno.EFBIG), out.stderr
    assert target.read_text() == '{"exit_code": 3}' and _leftovers(tmp_path) == []


def _failing(on_call: int, calls: list[int]) -> Callable[[int], None]:
    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == on_call:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)
    return fsync


def test_a_failed_flush_of_the_data_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "supervisor.json"
    target.write_text("old")
    calls: list[int] = []
    with pytest.raises(OSError, match="Input/output"):
        replace_file(str(target), b"new", fsync=_failing(1, calls))
    assert target.read_text() == "old" and _leftovers(tmp_path) == [] and len(calls) == 1


def test_a_failed_flush_of_the_directory_is_an_error_though_the_file_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "supervisor.json"
    target.write_text("old")
    calls: list[int] = []
    with pytest.raises(OSError, match="Input/output"):
        replace_file(str(target), b"new", fsync=_failing(2, calls))
    assert target.read_text() == "new" and len(calls) == 2  # renamed, but not known to be on the disk


def test_not_durable_is_atomic_without_a_flush(tmp_path: Path) -> None:
    calls: list[int] = []
    replace_file(str(tmp_path / "kill.json"), b"{}", durable=False, fsync=_failing(1, calls))
    assert (tmp_path / "kill.json").read_text() == "{}" and calls == []


def test_an_appended_record_is_flushed(tmp_path: Path) -> None:
    calls: list[int] = []
    fd = os.open(tmp_path / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        append_record(fd, b"one\n", fsync=lambda f: calls.append(f))
        append_record(fd, b"two\n", fsync=lambda f: calls.append(f))
    finally:
        os.close(fd)
    assert (tmp_path / "events.jsonl").read_text() == "one\ntwo\n" and calls == [fd, fd]


# -- the files that must survive a crash, as the kernel sees them written ------------------------------

WRITERS = {
    "shim exit file": """
from berth._runtimes.runc.shim.files import write_json
write_json(d + "/exit.json", {"id": "c1", "exit_code": 3})
""",
    "supervisor state": """
from berth._service.desired import DesiredStore, Saved
DesiredStore(d).save(Saved(version=1))
""",
    "agent cache": """
from berth._cluster.cache import DocumentCache
DocumentCache(d).save(b"{}", "1", "n1")
""",
}


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see the system calls")
@pytest.mark.parametrize("what", sorted(WRITERS))
def test_files_that_must_survive_a_crash_are_flushed_then_renamed_then_their_directory_flushed(
        tmp_path: Path, what: str) -> None:
    trace = tmp_path / "trace"
    d = tmp_path / "state"
    d.mkdir()
    code = f"d = {str(d)!r}\n" + WRITERS[what]
    subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=openat,fsync,fdatasync,rename,renameat,"
                    "renameat2", sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if str(d) in line or "fsync" in line]
    steps: list[str] = []
    fds: dict[str, str] = {}
    for call in calls:
        if m := re.match(r'openat\(AT_FDCWD, "([^"]+)", ([^)]*)\) = (\d+)', call):
            fds[m.group(3)] = m.group(1)
            if m.group(1).startswith(str(d)):
                what_ = "dir" if "O_DIRECTORY" in m.group(2) else "tmp" if m.group(1).endswith(".tmp") else "file"
                steps.append(f"open {what_}")
        elif m := re.match(r"f(?:data)?sync\((\d+)\)", call):
            path = fds.get(m.group(1), "")
            if path.startswith(str(d)):
                steps.append("fsync dir" if not path.endswith(".tmp") else "fsync tmp")
        elif call.startswith("rename"):
            steps.append("rename")
    assert steps[-4:] == ["fsync tmp", "rename", "open dir", "fsync dir"], (what, steps)
    assert "open tmp" in steps and steps.index("open tmp") < len(steps) - 4
    assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []
    assert all(json.loads(p.read_text()) is not None for p in d.rglob("*.json"))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see the system calls")
def test_the_supervisors_event_log_is_flushed_after_each_record(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    code = (f"from berth._service.events import EventLog\nlog = EventLog({str(tmp_path)!r})\n"
            "for i in range(3): log.write(f'w{i}', None, None, 'test')\n")
    subprocess.run(["strace", "-f", "-qq", "-s", "256", "-o", str(trace), "-e", "trace=write,fsync", sys.executable,
                    "-c", code], cwd=ROOT, check=True, capture_output=True)
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines()]
    records = [i for i, c in enumerate(calls) if c.startswith("write(") and '"worker_id' in c]
    assert len(records) == 3 and all(calls[i + 1].startswith("fsync(") for i in records), calls


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see the system calls")
def test_the_exit_journal_flushes_each_record_before_it_returns(tmp_path: Path) -> None:
    """Append-only: each exit's line is written, then flushed, one record at a time."""
    trace = tmp_path / "trace"
    code = ("from berth._node.journal import ExitJournal\nfrom berth._runtimes.base import ExitRecord\n"
            f"j = ExitJournal({str(tmp_path)!r})\n"
            "for i in range(3): j.record(ExitRecord('w1', f'c{i}', 3, None, False, None, None))\n")
    subprocess.run(["strace", "-f", "-qq", "-s", "256", "-o", str(trace), "-e", "trace=write,fsync,fdatasync",
                    sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines()]
    records = [i for i, c in enumerate(calls) if c.startswith("write(") and '"container_id' in c]
    assert len(records) == 3 and all(calls[i + 1].startswith(("fdatasync(", "fsync(")) for i in records), calls


def test_the_exit_journal_knows_reported_exits_forgets_removed_ones_and_compacts(tmp_path: Path) -> None:
    from berth._node.journal import ExitJournal
    from berth._runtimes.base import ExitRecord

    j = ExitJournal(str(tmp_path), compact_bytes=2000)
    (tmp_path / "exits").mkdir()
    (tmp_path / "exits" / "c-old.json").write_text("{}")  # a file of berth before the journal
    for i in range(40):
        j.record(ExitRecord("w", f"c{i}", i, None, False, None, None))
    with open(j.path, "ab") as fh:
        fh.write(b'{"container_id": "c-cut", "exit_co')  # a line cut by a crash
    assert j.known() == {"c-old", *(f"c{i}" for i in range(40))}
    assert j.entries()["c7"]["exit_code"] == 7
    for i in range(35):
        j.forget(f"c{i}")
    j.forget("c-old")
    assert j.known() == {f"c{i}" for i in range(35, 40)}
    assert j.path.stat().st_size < 2000  # compacted: the forgotten ones are gone from the file
    assert [p.name for p in (tmp_path / "exits").iterdir()] == ["journal.jsonl"]
    j.record(ExitRecord("w", "c-new", 0, None, False, None, None))  # appends go on in the new file
    assert ExitJournal(str(tmp_path)).known() == {"c-new", *(f"c{i}" for i in range(35, 40))}
