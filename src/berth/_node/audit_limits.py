"""Audit checks of the node's maxima: whatever request a worker stands for, the memory and pids
limits its cgroup enforces are within what the node allows one worker, and its output is bounded.

Apart from the comparison with the plan (``audit``): a container whose request the node would
now refuse fails the ``plan`` check, and is still checked here, against maxima that do not
depend on the request. The values are read from the worker's own cgroup files (v1 or v2).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .._core.config import NodeConfig
from .._core.hostfacts import HostFacts
from .._core.limits import max_memory_mb, max_pids
from .._core.plan import LogLimits
from .._linux import cgroup as _cgroup
from .._linux.proc import is_stopped
from .check import Check, Locator, read_check

MIB = 1024 * 1024


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()


def memory_limit_bytes(pid: int, locate: Locator = _cgroup.cgroup_dir) -> int | None:
    """The memory limit of ``pid``'s cgroup in bytes, None for none."""
    d, v = locate(pid, "memory")
    text = _read(os.path.join(d, "memory.limit_in_bytes" if v == 1 else "memory.max"))
    if text in ("max", "-1"):
        return None
    value = int(text)
    return None if v == 1 and value >= 2**62 else value  # v1 writes "no limit" as a huge number


def pids_limit(pid: int, locate: Locator = _cgroup.cgroup_dir) -> int | None:
    d, _ = locate(pid, "pids")
    text = _read(os.path.join(d, "pids.max"))
    return None if text == "max" else int(text)


def maxima_checks(pid: int, config: NodeConfig, host: HostFacts, logs: LogLimits | None,
                  locate: Locator = _cgroup.cgroup_dir) -> list[Check]:
    """``memory.node_max`` and ``pids.node_max``: the worker's cgroup limits are set, and within
    the node's maxima per worker (``container.max_memory_mb``, ``container.max_pids_limit``, or
    their defaults derived from the host). ``logs.limit``: the runtime keeps no more of the
    worker's output than the node's log limits (``logs``, from the runtime's ``describe``: output
    is the runtime's to keep, so its account is the only one there is)."""
    c = config.container
    want = LogLimits(c.log_max_size_mb, c.log_max_files)
    stopped = is_stopped(pid)
    checks: list[Check] = [Check(
        "logs.limit", logs is not None and logs.file_mb <= want.file_mb and logs.files <= want.files, str(want),
        "unbounded (or kept off the node)" if logs is None else str(logs)), Check(
        # A main process stopped from inside (ptrace) makes "running" a lie: the worker cannot end.
        "main.not_stopped", not stopped, "PID 1 runs (not stopped or traced)",
        f"pid {pid} is stopped" if stopped else f"pid {pid} is not stopped")]

    def attempt(name: str, expected: str, fn: Callable[[], tuple[bool, str]]) -> None:
        checks.append(read_check(name, expected, fn))

    mem_max = max_memory_mb(config, host)

    def memory() -> tuple[bool, str]:
        got = memory_limit_bytes(pid, locate)
        if got is None:
            return False, "unlimited"
        return mem_max is None or got <= mem_max * MIB, f"{got / MIB:g} MiB"

    pids_max = max_pids(config, host)

    def pids() -> tuple[bool, str]:
        got = pids_limit(pid, locate)
        if got is None:
            return False, "unlimited"
        return got <= pids_max, str(got)

    attempt("memory.node_max", "set" if mem_max is None else f"at most {mem_max} MiB (the node's maximum)", memory)
    attempt("pids.node_max", f"at most {pids_max} (the node's maximum)", pids)
    return checks
