"""The runc runtime's pure parts, pinned: exit files as records, cgroup numbers on v1 and v2
(fabricated files), what a runc container stands for, log rotation, image lookup, ps words."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from berth import ExitRecord
from berth._linux.cgroup import CgroupMount, memory_dir_for
from berth._runtimes.logfile import read_logs
from berth._runtimes.runc.bundle import request_from_oci
from berth._runtimes.runc.runtime import RuncRuntime, record_from_exit
from berth._runtimes.runc.shim.files import cgroup_numbers, decode_status
from berth._runtimes.runc.shim.logs import Output, make_pipe
from berth._runtimes.runc.shimclient import ShimClient, ShimError
from berth._storm.loading import checked_config as config_from_mapping

STARTED, FINISHED = "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:01.500000Z"
EXIT: dict[str, object] = {"id": "c1", "worker": "w1", "pid": 42, "status": 35072, "started_at": STARTED,
        "finished_at": FINISHED, "oom_kills": 0, "peak_memory_bytes": 1 << 20,
        "status_lost": False, "exit_code": 137, "signal": None, "core_dumped": False}


def test_raw_statuses_decode_exactly() -> None:
    assert decode_status(137 << 8) == {"exit_code": 137, "signal": None, "core_dumped": False}
    assert decode_status(9) == {"exit_code": 137, "signal": 9, "core_dumped": False}
    assert decode_status(11 | 0x80) == {"exit_code": 139, "signal": 11, "core_dumped": True}
    assert decode_status(3 << 8) == {"exit_code": 3, "signal": None, "core_dumped": False}


def test_exit_files_become_exact_records() -> None:
    rec = record_from_exit(EXIT)
    assert rec == ExitRecord("w1", "c1", 137, None, False, STARTED, FINISHED, exact=True)
    assert rec.brief() == "exited 137"
    killed = record_from_exit({**EXIT, "signal": 9})
    assert (killed.signal, killed.oom_killed, killed.oom_victim) == (9, False, None)
    assert killed.brief() == "killed by SIGKILL"
    oom = record_from_exit({**EXIT, "signal": 9, "oom_kills": 1})
    assert (oom.oom_killed, oom.oom_victim) == (True, "worker")
    assert oom.brief() == "killed by SIGKILL, out of memory"
    child = record_from_exit({**EXIT, "exit_code": 0, "oom_kills": 2})
    assert (child.oom_killed, child.oom_victim, child.brief()) == (False, "child", "exited 0, a child out of memory")
    lost = record_from_exit({**EXIT, "status_lost": True, "exit_code": None, "status": None})
    assert (lost.exit_code, lost.signal, lost.exact, lost.status_lost) == (None, None, False, True)
    assert lost.brief() == "status lost"


def test_inexact_records_show_the_code_with_the_signal_it_may_stand_for() -> None:
    rec = ExitRecord("w", "c", 137, 9, False, None, None, exact=False)
    assert rec.brief() == "exit code 137 (SIGKILL?)"


def test_cgroup_numbers_v1_and_v2_from_fabricated_files(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (v1 / "memory.max_usage_in_bytes").write_text("67108864\n")
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
    (v2 / "memory.peak").write_text("1048576\n")
    assert cgroup_numbers(str(v1), 1) == (3, 67108864)
    assert cgroup_numbers(str(v2), 2) == (2, 1048576)
    (v2 / "memory.peak").unlink()  # kernels before 5.19 keep no peak on v2
    assert cgroup_numbers(str(v2), 2) == (2, None)
    assert cgroup_numbers(str(tmp_path / "gone"), 2) == (None, None)
    assert cgroup_numbers(None, 1) == (None, None)


def test_the_memory_cgroup_of_a_path_on_v1_and_on_v2(tmp_path: Path) -> None:
    v1 = (CgroupMount("/sys/fs/cgroup/memory", "/", 1, frozenset({"rw", "memory"})),
          CgroupMount("/sys/fs/cgroup/unified", "/", 2, frozenset()))
    assert memory_dir_for("/berth/w1", v1) == ("/sys/fs/cgroup/memory/berth/w1", 1)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    v2 = (CgroupMount(str(tmp_path), "/", 2, frozenset()),)
    assert memory_dir_for("/berth/w1", v2) == (str(tmp_path / "berth/w1"), 2)
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")  # a hybrid host's empty v2 mount
    assert memory_dir_for("/berth/w1", v2) is None


def test_what_a_runc_container_stands_for() -> None:
    config = {"annotations": {"berth.worker": "w1", "berth.topology": "topo", "berth.port": "6700",
                              "berth.user": "alice", "berth.image": "berth/python:latest"},
              "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000, "cpus": "0-1", "mems": "0"},
                                      "memory": {"limit": 64 * 2**20 + 1}, "pids": {"limit": 99}}}}
    assert request_from_oci(config) == {
        "worker_id": "w1", "topology_id": "topo", "user": "alice", "image": "berth/python:latest", "port": 6700,
        "cpu_percent": 150, "memory_mb": 65, "pids_limit": 99, "cores": (0, 1), "numa_node": 0}
    assert request_from_oci({}) == {}


def _pipe_output(tmp_path: Path, max_bytes: int, files: int) -> tuple[Output, int]:
    r, w = make_pipe()
    return Output(r, str(tmp_path / "output.log"), max_bytes, files), w


def test_output_is_drained_into_at_most_n_files_of_the_newest_bytes(tmp_path: Path) -> None:
    out, w = _pipe_output(tmp_path, 10, 3)
    os.write(w, b"a" * 10 + b"b" * 10 + b"c" * 10 + b"d" * 5)
    assert out.drain() is True  # the pipe is empty, a writer is left
    assert sorted(os.listdir(tmp_path)) == ["output.log", "output.log.1", "output.log.2"]
    assert [(tmp_path / n).read_bytes() for n in ("output.log.2", "output.log.1", "output.log")] == [
        b"b" * 10, b"c" * 10, b"d" * 5]  # the oldest 10 bytes dropped, never more than 3 x 10 on disk
    files = [str(tmp_path / "output.log.2"), str(tmp_path / "output.log.1"), str(tmp_path / "output.log")]
    assert b"".join(read_logs(files, None, False, lambda: False)) == b"b" * 10 + b"c" * 10 + b"d" * 5
    os.write(w, b"e" * 7)
    os.close(w)
    assert out.drain() is False and (tmp_path / "output.log").read_bytes() == b"e" * 2  # 5 + 5, then 2
    assert (tmp_path / "output.log.1").read_bytes() == b"d" * 5 + b"e" * 5
    out.close()


def test_one_output_file_is_started_again_when_full_and_a_turn_is_bounded(tmp_path: Path) -> None:
    out, w = _pipe_output(tmp_path, 4, 1)
    os.write(w, b"0123456789")
    assert out.drain(budget=6) is True and (tmp_path / "output.log").read_bytes() == b"45"  # 6 of 10 moved
    assert out.drain() is True and (tmp_path / "output.log").read_bytes() == b"89"  # 2 more fill it: a new one
    assert os.listdir(tmp_path) == ["output.log"]
    os.close(w)
    out.close()


def test_an_output_goes_on_in_its_file_after_an_upgrade(tmp_path: Path) -> None:
    (tmp_path / "output.log").write_bytes(b"before\n")
    out, w = _pipe_output(tmp_path, 10, 2)  # the new program image opens the file being written
    os.write(w, b"after\n")
    out.drain()
    assert (tmp_path / "output.log.1").read_bytes() == b"before\naft"  # filled to 10 bytes, then rotated
    assert (tmp_path / "output.log").read_bytes() == b"er\n"
    os.close(w)
    out.close()


FULL_DISK = r"""
import os, resource, signal, sys
from berth._runtimes.runc.shim.logs import Output, make_pipe
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
r, w = make_pipe()
out = Output(r, sys.argv[1], 1 << 20, 2)
os.write(w, b"x" * 5000)
print(out.drain(), out.size, out.lost, out.error)
os.write(w, b"y" * 10)
print(out.drain(), out.size, out.lost)
"""


def test_output_that_cannot_be_written_is_dropped_and_counted_never_left_to_block_the_worker(
        tmp_path: Path) -> None:
    """A real refusal by the kernel (the file size limit, EFBIG after 1000 bytes) stands for a full disk."""
    got = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "output.log")], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert got[0] == "True 1000 4000 cannot write " + str(tmp_path / "output.log") + ": File too large; output dropped"
    assert got[1] == "True 1000 4010"  # the pipe is emptied all the same: the worker's writes go on
    assert (tmp_path / "output.log").stat().st_size == 1000


def test_images_are_directories_named_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "python").mkdir()
    (tmp_path / "custom").mkdir()
    cfg = config_from_mapping({"node": {"runtime": "runc", "state_dir": str(tmp_path / "state")},
                               "runc": {"images": {"shop/app:1": str(tmp_path / "custom")},
                                        "image_root": str(tmp_path)}})
    rt = RuncRuntime(cfg)
    assert rt.image_dir("shop/app:1") == str(tmp_path / "custom")
    assert rt.image_dir("berth/python:latest") == str(tmp_path / "python")
    assert rt.image_dir("berth/python:3.11") == str(tmp_path / "python")
    assert rt.image_dir("berth/busybox:latest") is None  # no such directory
    assert rt.image_dir("other/python:latest") is None  # only berth/… names map to image_root
    assert not rt.image_present("berth/../etc:x")


@pytest.mark.parametrize("bad, field", [
    ({"images": {"Not An Image": "/x"}}, "runc.images"),
    ({"images": {"a/b:1": "relative"}}, "runc.images"),
    ({"binary": "runc; rm -rf /"}, "runc.binary"),
    ({"default_seccomp": "seccomp.json"}, "runc.default_seccomp"),
])
def test_bad_runc_config_names_the_field(bad: dict[str, object], field: str) -> None:
    from berth import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_mapping({"runc": bad})
    assert str(err.value).startswith(field)


def _fake_shim(path: str, answers: list[bytes | None]) -> tuple[list[bytes], threading.Thread]:
    """A socket that answers the n-th connection with answers[n] (None: it closes without a word,
    as a shim does when it re-executes itself)."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    seen: list[bytes] = []

    def serve() -> None:
        with srv:
            for answer in answers:
                conn, _ = srv.accept()
                with conn:
                    seen.append(conn.makefile("rb").readline())
                    if answer is not None:
                        conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return seen, t


def test_a_request_is_sent_again_while_the_shim_re_executes_itself(tmp_path: Path) -> None:
    client = ShimClient(str(tmp_path), "runc", str(tmp_path / "root"))
    seen, t = _fake_shim(client.socket_path, [
        b'{"ok": false, "retry": true, "error": "the shim is restarting; try again"}\n', None,
        b'{"ok": true, "pid": 7}\n'])
    assert client.request({"op": "run", "id": "c1"}, timeout=30) == {"ok": True, "pid": 7}
    t.join(5)
    assert [json.loads(line) for line in seen] == [{"op": "run", "id": "c1"}] * 3


def test_a_refusal_is_final_and_a_missing_shim_is_not_waited_for(tmp_path: Path) -> None:
    client = ShimClient(str(tmp_path), "runc", str(tmp_path / "root"))
    with pytest.raises(ShimError, match="no berth-shim answers"):
        client.request({"op": "hello"}, timeout=30, start=False)
    seen, t = _fake_shim(client.socket_path, [b'{"ok": false, "error": "run: c1 is running already"}\n'])
    with pytest.raises(ShimError, match="c1 is running already"):
        client.request({"op": "run", "id": "c1"}, timeout=30)
    t.join(5)
    assert len(seen) == 1


def test_whether_a_process_handles_a_signal_is_read_from_its_masks() -> None:
    """A stop sends SIGTERM only to a worker that catches or ignores it: as PID 1 of its namespace
    the kernel would drop it otherwise (the shim sends SIGKILL at once instead)."""
    import signal

    from berth._runtimes.runc.shim.files import handles

    old = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert not handles(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: None)
        assert handles(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert handles(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert handles(2**22 + 12345, signal.SIGTERM)  # unknown (no such process): as before, SIGTERM is sent


def test_no_stub_of_the_shims_halves_shadows_the_real_method() -> None:
    """The shim is one class of three halves; a stub standing for another half's method must never
    be the one called (one was, and the shim crashed on every start)."""
    from berth._runtimes.runc.shim.exits import ExitBook
    from berth._runtimes.runc.shim.monitor import Shim
    from berth._runtimes.runc.shim.wire import Wire

    for half in (ExitBook, Wire):
        stubs = [n for n, f in vars(half).items()
                 if hasattr(f, "__code__") and "NotImplementedError" in f.__code__.co_names]
        assert stubs
        assert all(getattr(Shim, n) is not getattr(half, n) for n in stubs), stubs
