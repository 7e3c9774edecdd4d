"""What every part of the benchmark shares: paths, the worker program, clocks, /proc readings.

The clock. A worker records when its first and its last instruction run with bash's
``$EPOCHREALTIME`` (CLOCK_REALTIME, microsecond resolution, a shell variable: no process is
started to read it), and the launcher takes ``time.time_ns()`` (the same clock) when it calls
launch and when its exit callback runs. Both sides read one kernel clock on one machine, so the
difference is exact to the microsecond; CLOCK_MONOTONIC would be the same clock but for NTP
adjustments, which the run checks for by watching ``time_ns() - monotonic_ns()`` from start
to end (``clock_drift_us`` in the results). ``python3 -c 'time.monotonic_ns()'`` would add
Python's start-up (9-14 ms on this machine, against 1.4-2 ms for bash) and ``/proc/uptime`` has 10 ms steps;
the start-up of the worker's bash is included equally for every launcher.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from berth._linux.proc import read_status

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
BENCH_ROOT = Path(os.environ.get("BERTH_BENCH_ROOT", "/var/lib/berth-bench"))
RUNS = BENCH_ROOT / "runs"
RUNC_ROOT = "/run/berth-bench-runc"
PRIVATE_RUN = "/run/berth-b"
SHARED_URL = "unix:///run/berth-dev/docker.sock"
PRIVATE_URL = f"unix://{PRIVATE_RUN}/docker.sock"
DEFAULT_ROOTFS = "/var/lib/berth-dev/rootfs/python"
IMAGE = "berth/python:latest"
USER = "berth-alice"
CGROUP_PARENT = "/berth-bench"
NAME_PREFIX = "bnch-"
"""Every container, runc container and worker id the bench makes starts with this."""
NODE_PREFIX = "bench-"
"""berth's ``berth.node`` label of every bench container that carries labels."""

LAUNCHERS = ("berth", "berth_runc", "storm_style", "sdk", "runc", "runc_noseccomp")
TAGS = {"berth": "b", "berth_runc": "c", "storm_style": "s", "sdk": "k", "runc": "r", "runc_noseccomp": "n"}
SEQUENTIAL_ONLY = ("runc_noseccomp",)
"""Launchers measured in the sequential phase only: bare runc without a filter is there to show
what the seccomp filter costs a launch, nothing else."""
FIELDS = ("launch_p50_ms", "launch_p90_ms", "throughput_50_s", "exit_detect_p50_ms", "threads_100",
          "children_100", "rss_100_mb", "idle_cpu_s_100", "memory_read_us")

# The worker: stamp t0, make a fifo, block on it until the bench releases it, stamp t1, exit.
# Blocking in open(2) on a fifo costs no CPU and needs no polling on either side.
WORKER_SH = ('printf %s "$EPOCHREALTIME" > t0\n'
             "mkfifo go\n"
             "read -r _ < go\n"
             'printf %s "$EPOCHREALTIME" > t1\n'
             "exit 0\n")
WORKER_CMD = ("bash", "-c", WORKER_SH)


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


class Stopping:
    """Set on Ctrl-C / SIGTERM: launch calls that have not started yet refuse to start."""

    event = threading.Event()


def now_ns() -> int:
    return time.time_ns()


def parse_epochrealtime(text: str) -> int:
    """``1795805587.269209`` (bash, C locale) as nanoseconds."""
    sec, _, frac = text.strip().partition(".")
    if not sec.isdigit() or not frac.isdigit():
        raise ValueError(f"not an EPOCHREALTIME value: {text!r}")
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def read_stamp(path: Path, timeout: float, died: threading.Event | None = None) -> int:
    """Wait for the worker to write a timestamp file; returns it in ns.

    Polls the host filesystem every 2 ms: the value is the worker's own clock reading, so the
    polling delay never enters a measurement.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return parse_epochrealtime(path.read_text())
        except (FileNotFoundError, ValueError):
            pass
        if died is not None and died.is_set():
            # the exit may have raced the write: one last look
            try:
                return parse_epochrealtime(path.read_text())
            except (FileNotFoundError, ValueError):
                raise BenchError(f"worker ended before writing {path}") from None
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear within {timeout:.0f}s")
        time.sleep(0.002)


def release(fifo: Path, timeout: float = 30.0) -> None:
    """Let a worker blocked on its ``go`` fifo go on (it then stamps t1 and exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # not made yet (ENOENT) or no reader yet (ENXIO)
            if time.monotonic() > deadline:
                raise BenchError(f"cannot open {fifo} for writing within {timeout:.0f}s") from None
            time.sleep(0.001)
    try:
        os.write(fd, b"\n")
    finally:
        os.close(fd)


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ------------------------------------------------------------------------------- /proc


CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    threads: int
    rss_kb: int
    cpu_s: float


def usage(pid: int) -> dict[str, int]:
    """A live process's ``VmRSS`` (KiB) and ``Threads``, as its /proc status gives them."""
    st = read_status(pid)
    return {"VmRSS": int(st.get("VmRSS", "0 kB").split()[0]), "Threads": int(st.get("Threads", "1"))}


def proc_info(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
        use = usage(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2:].split()
    ppid = int(rest[1])
    utime, stime = int(rest[11]), int(rest[12])
    return ProcInfo(pid, ppid, comm, use["Threads"], use["VmRSS"], (utime + stime) / CLK_TCK)


def cpu_ns(pid: int) -> int | None:
    """CPU time of every live thread of ``pid`` in ns (``/proc/<pid>/task/*/schedstat``), which is
    exact where ``/proc/<pid>/stat`` counts 10 ms ticks; None if the process is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError):
            continue
    return total


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(root: int, exclude: set[int] | None = None) -> list[int]:
    """Every live descendant of ``root``; a pid in ``exclude`` is skipped with its subtree."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as fh:
                stat = fh.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out: list[int] = []
    todo = list(children.get(root, []))
    skip = exclude or set()
    while todo:
        pid = todo.pop()
        if pid in skip:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def read_pidfile(path: str) -> int | None:
    try:
        pid = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if proc_info(pid) is not None else None
