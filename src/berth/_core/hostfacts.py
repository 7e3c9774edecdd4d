"""Facts about the node that a plan depends on (online cpus and memory nodes, RAM, pid_max,
threads-max, ARG_MAX).

Read once and handed to the planner, so the planner stays a pure function and tests can
describe any machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse the kernel's list format (``0-3,8,10-11``)."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def format_cpu_list(cpus: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in cpus)


@dataclass(frozen=True)
class HostFacts:
    """What the planner needs to know about this machine. The memory, pid and exec facts are None
    where unknown (a test describing a machine), and then only the node config bounds requests."""

    cpus: frozenset[int]
    mems: frozenset[int]
    memory_mb: int | None = None
    """RAM (``MemTotal``), in MiB: the default maximum memory per worker is derived from it."""
    pid_max: int | None = None
    """``kernel.pid_max``: every pid of the host, all workers' included, comes from this pool."""
    arg_max: int | None = None
    """``sysconf(_SC_ARG_MAX)``: the most argv + environment bytes one exec takes here."""
    threads_max: int | None = None
    """``kernel.threads-max``: the other bound on the tasks of the whole host (a pid is a task)."""

    @property
    def cpu_count(self) -> int:
        return len(self.cpus)

    @classmethod
    def probe(cls, sysfs: str = "/sys/devices/system", proc: str = "/proc") -> HostFacts:
        def read(rel: str, fallback: str) -> frozenset[int]:
            try:
                return parse_cpu_list(Path(sysfs, rel).read_text())
            except OSError:
                return parse_cpu_list(fallback)

        return cls(cpus=read("cpu/online", f"0-{(os.cpu_count() or 1) - 1}"), mems=read("node/online", "0"),
                   memory_mb=_mem_total_mb(proc), pid_max=_read_int(Path(proc, "sys/kernel/pid_max")),
                   arg_max=_arg_max(), threads_max=_read_int(Path(proc, "sys/kernel/threads-max")))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _mem_total_mb(proc: str) -> int | None:
    try:
        with open(os.path.join(proc, "meminfo"), encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _arg_max() -> int | None:
    try:
        value = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        return None
    return value if value > 0 else None
