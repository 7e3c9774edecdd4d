"""Facts about the node that a plan depends on (online cpus and memory nodes).

Read once and handed to the planner, so the planner stays a pure function and tests can
describe any machine.
"""

from __future__ import annotations

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
    cpus: frozenset[int]
    mems: frozenset[int]

    @property
    def cpu_count(self) -> int:
        return len(self.cpus)

    @classmethod
    def probe(cls, sysfs: str = "/sys/devices/system") -> HostFacts:
        def read(rel: str, fallback: str) -> frozenset[int]:
            try:
                return parse_cpu_list(Path(sysfs, rel).read_text())
            except OSError:
                return parse_cpu_list(fallback)

        import os

        return cls(cpus=read("cpu/online", f"0-{(os.cpu_count() or 1) - 1}"), mems=read("node/online", "0"))
