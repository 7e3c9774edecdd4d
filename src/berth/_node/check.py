"""One audited property (``Check``): the audit's unit, shared by its process, mount, cgroup and
limit checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Locator = Callable[[int, str], tuple[str, int]]
"""``(pid, controller) -> (cgroup directory, cgroup version)``, as ``_linux.cgroup.cgroup_dir``."""


@dataclass(frozen=True)
class Check:
    """One audited property: what berth's plan says, what the kernel shows, and whether they agree."""

    name: str
    ok: bool
    expected: str
    observed: str

    def line(self, prefix: str = "") -> str:
        return (f"{'PASS' if self.ok else 'FAIL'}  {prefix}{self.name}: observed {self.observed}"
                f"  (expected {self.expected})")



def read_check(name: str, expected: str, fn: Callable[[], tuple[bool, str]]) -> Check:
    """A check whose observation is read from a kernel file: a file that cannot be read fails it."""
    try:
        ok, observed = fn()
    except (OSError, ValueError) as exc:
        ok, observed = False, f"cannot read: {exc}"
    return Check(name, ok, expected, observed)
