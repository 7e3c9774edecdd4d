"""A runc worker's output: a pipe berth-shim drains into files only the shim holds (issue 18.1, 18.2).

The worker never holds a descriptor of a file on berth's filesystems: it cannot reserve disk
behind its output (fallocate), overshoot the node's log limits at page-cache speed, or take a
lease on a file the monitor must write. An upgrade of the shim keeps the pipes; a killed shim
loses them, and the worker's writes then fail with EPIPE (docs/runtimes.md).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from berth import Node, NodeConfig
from berth._runtimes.runc.runtime import RuncRuntime
from berth._runtimes.runc.shimclient import ShimClient

from ._helpers import WAIT, WAIT_FOR_GO, Exits, go, root_of, wait_file
from ._helpers import worker as spec
from .conftest import poll_until

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _limited(cfg: NodeConfig, size_mb: int = 1, files: int = 2) -> Node:
    return Node(cfg.model_copy(update={"container": cfg.container.model_copy(
        update={"log_max_size_mb": size_mb, "log_max_files": files})}))


def _shim(node: Node) -> ShimClient:
    assert isinstance(node.runtime, RuncRuntime)
    return node.runtime.shim


def _on_disk(cfg: NodeConfig, wid: str) -> int:
    """Bytes the worker's output takes on berth's filesystem: the larger of size and allocation of
    each file (a reservation past the end of a file has no size, only blocks)."""
    total = 0
    for p in Path(cfg.runtime_dir("runc"), "workers", wid).glob("output.log*"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        total += max(st.st_size, st.st_blocks * 512)
    return total


RESERVE = r"""
import ctypes, errno, json, os, stat
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
out = {}
for fd in (1, 2):
    out[f"fd{fd}"] = "fifo" if stat.S_ISFIFO(os.fstat(fd).st_mode) else "file"
    rc = libc.fallocate(fd, 1, 0, 1 << 30)  # FALLOC_FL_KEEP_SIZE: 1 GiB reserved, the size stays 0
    out[f"fallocate{fd}"] = "reserved" if rc == 0 else errno.errorcode[ctypes.get_errno()]
try:
    again = os.open("/proc/self/fd/1", os.O_WRONLY)
    rc = libc.fallocate(again, 1, 0, 1 << 30)
    out["reopened"] = "reserved" if rc == 0 else errno.errorcode[ctypes.get_errno()]
except OSError as exc:
    out["reopened"] = errno.errorcode[exc.errno]
json.dump(out, open(".report.json", "w"))
os.rename(".report.json", "report.json")
""" + WAIT_FOR_GO


def test_a_workers_output_is_a_pipe_it_cannot_reserve_disk_behind(runc_config: NodeConfig) -> None:
    node = _limited(runc_config)
    node.launch(spec("w-res", RESERVE), on_exit=lambda r: None)
    wait_file(root_of(node, "w-res") / "report.json", node, "w-res")
    seen = json.loads((root_of(node, "w-res") / "report.json").read_text())
    assert seen["fd1"] == seen["fd2"] == "fifo", seen
    assert (seen["fallocate1"], seen["fallocate2"], seen["reopened"]) == ("ESPIPE",) * 3, seen  # 1 GiB before
    assert _on_disk(runc_config, "w-res") < MiB
    go(node, "w-res", "0")
    assert node.wait("w-res", WAIT).exit_code == 0
    node.close()


FLOOD = r"""
import os, sys
chunk = (b"x" * 1023 + b"\n") * 64
for _ in range(int(sys.argv[1]) * 16):
    os.write(1, chunk)
os.write(1, b"END " + sys.argv[2].encode() + b"\n")
open("done", "w").close()
""" + WAIT_FOR_GO


def test_two_flooders_never_keep_more_than_the_log_limit_on_disk(runc_config: NodeConfig) -> None:
    """At page-cache speed, 400 MiB each against a limit of 2 x 1 MiB: the shim writes what it
    drains and rotates before a file passes its size, so there is never more on disk than the limit
    (plus 1 MiB of slack the issue allows); sampled on the host all along the flood."""
    node = _limited(runc_config)
    shim_fds = -1
    for wid in ("w-fl1", "w-fl2"):
        node.launch(spec(wid, FLOOD, "400", wid, port=6700 + int(wid[-1])), on_exit=lambda r: None)
        if shim_fds < 0:
            pid = _shim(node).pid()
            assert pid is not None
            shim_fds = len(os.listdir(f"/proc/{pid}/fd")) - 2  # before the first worker's pipe and file
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, *(_on_disk(runc_config, w) for w in ("w-fl1", "w-fl2")))
        return all((root_of(node, w) / "done").exists() for w in ("w-fl1", "w-fl2"))

    poll_until(done, "both floods to end", every=0.001)
    assert peak <= 2 * MiB + MiB, peak
    for wid in ("w-fl1", "w-fl2"):
        poll_until(lambda w=wid: b"END" in b"".join(node.logs(w, tail=1)), "the last line to be drained")  # type: ignore[misc]
        assert b"".join(node.logs(wid, tail=1)) == f"END {wid}\n".encode()
        assert sorted(p.name for p in Path(runc_config.runtime_dir("runc"), "workers", wid).glob("output.log*")) == [
            "output.log", "output.log.1"]
        go(node, wid, "0")
        assert node.wait(wid, WAIT).exit_code == 0
    pid = _shim(node).pid()
    assert pid is not None
    poll_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) <= shim_fds, "the shim to close the workers' pipes")
    node.close()


LEASE = r"""
import errno, fcntl, json, os, signal, stat
signal.signal(signal.SIGIO, signal.SIG_IGN)
os.write(1, (b"y" * 1023 + b"\n") * 2048)  # 2 MiB: past the 1 MiB the shim rotates at
fd = os.open("/proc/self/fd/1", os.O_RDONLY)
os.close(1)
os.close(2)
out = {"kind": "fifo" if stat.S_ISFIFO(os.fstat(fd).st_mode) else "file"}
try:
    fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)  # F_SETLEASE: whoever opens it for writing waits 45 s
    out["lease"] = "taken"
except OSError as exc:
    out["lease"] = errno.errorcode[exc.errno]
json.dump(out, open(".report.json", "w"))
os.rename(".report.json", "report.json")
""" + WAIT_FOR_GO


def test_a_lease_taken_by_a_worker_cannot_stall_the_monitor(runc_config: NodeConfig) -> None:
    """The issue's repro: the worker reopened its output file read-only and leased it; the shim's
    rotation then waited out the kernel's lease-break time (45 s) in its only loop. Now the worker
    has a pipe, which cannot be leased, and another tenant's worker is served at once (the bound
    below is that break time, not a speed expectation)."""
    node = _limited(runc_config)
    node.launch(spec("w-lease", LEASE), on_exit=lambda r: None)
    wait_file(root_of(node, "w-lease") / "report.json", node, "w-lease")
    seen = json.loads((root_of(node, "w-lease") / "report.json").read_text())
    assert seen == {"kind": "fifo", "lease": "EINVAL"}, seen
    got = Exits()
    launcher = threading.Thread(target=lambda: node.launch(
        spec("w-other", "raise SystemExit(3)", user="berth-bob", topology_id="topo-o", port=6702), on_exit=got))
    launcher.start()
    assert got.wait_for(1, timeout=30)[0].exit_code == 3
    launcher.join(WAIT)
    go(node, "w-lease", "0")
    assert node.wait("w-lease", WAIT).exit_code == 0
    node.close()


TALKER = r"""
import os, signal, sys, time
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a broken pipe would kill it, as it kills a shell
i = 0
while not os.path.exists("go"):
    os.write(1, b"line %d\n" % i)
    if i == 20:
        open("talking", "w").close()
    i += 1
    time.sleep(0.005)
os.write(1, b"last %d\n" % i)
"""


def test_an_upgrade_keeps_the_pipes_and_no_line_is_lost(runc_node: Node) -> None:
    got = Exits()
    runc_node.launch(spec("w-talk", TALKER), on_exit=got)
    wait_file(root_of(runc_node, "w-talk") / "talking", runc_node, "w-talk")
    shim = _shim(runc_node)
    pid = shim.pid()
    for n in (1, 2):
        shim.upgrade()
        poll_until(lambda n=n: _execs(shim) == n, "the shim to re-execute itself")  # type: ignore[misc]
    assert shim.pid() == pid
    go(runc_node, "w-talk")
    rec = got.of("w-talk")
    assert (rec.exit_code, rec.signal) == (0, None)  # no SIGPIPE while the shim re-executed
    lines = b"".join(runc_node.logs("w-talk")).decode().splitlines()
    numbers = [int(x.split()[1]) for x in lines]
    assert numbers == list(range(len(numbers))) and lines[-1].startswith("last ")


def _execs(shim: ShimClient) -> int:
    try:
        return int(shim.hello()["execs"])
    except Exception:
        return -1


BROKEN = r"""
import errno, os, time
i = 0
while True:
    try:
        os.write(1, b"line %d\n" % i)
    except OSError as exc:
        open("broken", "w").write(errno.errorcode[exc.errno])
        break
    if i == 20:
        open("talking", "w").close()
    i += 1
    time.sleep(0.005)
""" + WAIT_FOR_GO


def test_a_killed_shim_takes_the_read_end_and_the_worker_sees_epipe(runc_config: NodeConfig) -> None:
    """What docs/runtimes.md promises: the pipe's only reader was the shim, so once it is SIGKILLed
    the worker's writes fail with EPIPE (SIGPIPE, which Python and the JVM ignore); it runs on."""
    node = Node(runc_config)
    node.launch(spec("w-orphan", BROKEN), on_exit=lambda r: None)
    wait_file(root_of(node, "w-orphan") / "talking", node, "w-orphan")
    shim = _shim(node)
    pid = shim.pid()
    assert pid is not None
    node.close()
    os.kill(pid, signal.SIGKILL)
    broken = root_of(node, "w-orphan") / "broken"
    poll_until(lambda: broken.exists() and broken.read_text() != "", "the worker to see its pipe break")
    assert broken.read_text() == "EPIPE"
    fresh = Node(runc_config)
    assert fresh.recover().adopted == ["w-orphan"]  # it ran on
    go(fresh, "w-orphan", "0")
    assert fresh.wait("w-orphan", WAIT).status_lost
    fresh.close()


NUMBERED = r"""
import os, time
for i in range(3000):
    os.write(1, b"%06d " % i + b"z" * 1016 + b"\n")
    if i % 100 == 99:
        time.sleep(0.01)
"""


def test_logs_follow_reads_on_across_rotations(runc_config: NodeConfig) -> None:
    node = _limited(runc_config, size_mb=1, files=3)
    node.launch(spec("w-follow", "open('ready', 'w').close()\n" + WAIT_FOR_GO + NUMBERED), on_exit=lambda r: None)
    wait_file(root_of(node, "w-follow") / "ready", node, "w-follow")
    stream = node.logs("w-follow", follow=True)
    go(node, "w-follow")
    data = b"".join(stream)  # ends when the worker has ended
    numbers = [int(line[:6]) for line in data.splitlines()]
    assert numbers == list(range(3000))  # 3 MiB through 1 MiB files: every line, once, in order
    node.close()
