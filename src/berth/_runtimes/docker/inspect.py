"""Pure translations of what the Docker engine reports (inspect documents, event attributes)
into berth's runtime-neutral values, kept apart from the runtime's I/O so they are unit-tested."""

from __future__ import annotations

import re
from typing import Any

from ..._core.plan import LogLimits

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", re.IGNORECASE)
_LOCAL_DEFAULTS = {"max-size": "20m", "max-file": "5"}
"""The ``local`` driver bounds its files even when told nothing; ``json-file`` does not."""


def log_limits(log_config: dict[str, Any] | None) -> LogLimits | None:
    """How the engine keeps a container's output, as the runtime-neutral ``LogLimits``: the
    ``json-file`` and ``local`` drivers rotate files of ``max-size``, ``max-file`` of them; the
    ``none`` driver keeps nothing; any other driver ships the output off the node (unbounded
    here, as far as berth can tell: None)."""
    kind = (log_config or {}).get("Type") or ""
    opts = dict((log_config or {}).get("Config") or {})
    if kind == "none":
        return LogLimits(0, 0)
    if kind == "local":
        opts = {**_LOCAL_DEFAULTS, **opts}
    elif kind != "json-file":
        return None
    m = _SIZE.fullmatch(str(opts.get("max-size", "")).strip())
    if not m:
        return None  # json-file without max-size: one file, never rotated
    size = float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()]
    files = int(opts.get("max-file", "1") or "1")
    return LogLimits(file_mb=max(1, -(-int(size) // 2**20)), files=files)


def oom_victim(cgroup_had_oom: bool, exit_code: int | None) -> str | None:
    """Whom the OOM killer took, from what the engine tells: its flag (or the cgroup's oom_kill
    count) says a process of the container was OOM-killed, and the worker's own status says
    whether it was the worker. The flag alone is not enough: a child can be OOM-killed while the
    worker goes on and exits 0; and 137 alone is any SIGKILL. (A worker SIGKILLed by someone else
    after a child's OOM kill is taken for the victim: the engine keeps no more than that.)"""
    if not cgroup_had_oom:
        return None
    return "worker" if exit_code == 128 + 9 else "child"
