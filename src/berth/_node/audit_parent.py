"""What runs under the node's cgroup parent without being one of its workers, unboxed.

The audit judges each worker against its plan, and finds workers through the runtime; a
container started by hand under the node's cgroup parent (``runc run`` with a root of its own,
``docker run --cgroup-parent``) is no worker of the node, so no worker's audit ever looks at it,
and nothing berth enforces covers it. ``berth audit --all`` therefore also reads the parent's
cgroups: a process in none of this node's running workers that is not boxed as a worker is
(uid 0, a capability, new privileges allowed, or no seccomp filter) fails. A boxed one passes
unnamed: it may be a worker of another node that shares the parent (tests do), or one starting.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from .._exceptions import BerthError
from .._linux import cgroup as _cgroup
from .._linux.proc import read_status
from .audit import AuditReport
from .check import Check
from .node import Node

MAX_CGROUPS = 10_000
"""Cgroups read under the parent at most (a hostile tree cannot make the audit run forever)."""
REPORT = "(cgroup parent)"


def boxed(status: Mapping[str, str]) -> bool:
    """Hardened as berth hardens a worker: no root id, no capability, no new privileges, a filter."""
    uids = status.get("Uid", "0").split()
    try:
        caps = int(status.get("CapEff", "1"), 16) | int(status.get("CapBnd", "1"), 16)
    except ValueError:
        return False
    return (all(u != "0" for u in uids) and caps == 0 and status.get("NoNewPrivs") == "1"
            and status.get("Seccomp") == "2")


def _pids(directory: str, recursive: bool, budget: list[int]) -> list[int]:
    out, todo = [], [directory]
    while todo and budget[0] > 0:
        d = todo.pop()
        budget[0] -= 1
        try:
            with open(os.path.join(d, "cgroup.procs"), encoding="ascii") as fh:
                out += [int(x) for x in fh.read().split()]
            if recursive:
                todo += [e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
        except (OSError, ValueError):
            continue
    return out


def _known(node: Node) -> set[str]:
    """The memory cgroup directories of this node's running workers."""
    out = set()
    for w in node.ps():
        if not w.running:
            continue
        try:
            pid = node.describe(w.worker_id).pid
            if pid:
                out.add(os.path.realpath(_cgroup.cgroup_dir(pid, "memory")[0]))
        except (BerthError, OSError):
            continue  # ended since the listing
    return out


def parent_checks(node: Node) -> list[Check]:
    """One failed check per cgroup under the parent (or the parent itself) holding unboxed
    processes that belong to no running worker of ``node`` (nor the runtime's own, starting one:
    ``Capabilities.starters``)."""
    starters = node.runtime.capabilities.starters
    parent = node.config.container.cgroup_parent
    where = _cgroup.memory_dir_for(parent)
    if where is None or not os.path.isdir(where[0]):
        return []
    top, known, budget = os.path.realpath(where[0]), _known(node), [MAX_CGROUPS]
    groups = [(top, False)]
    with contextlib.suppress(OSError):
        groups += [(os.path.realpath(e.path), True) for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
    checks = []
    for d, recursive in groups:
        if d in known:
            continue
        unboxed = []
        for pid in _pids(d, recursive, budget):
            try:
                st = read_status(pid)
            except OSError:
                continue  # ended meanwhile
            if not boxed(st) and not st.get("Name", "").startswith(starters or ("\0",)):
                unboxed.append((pid, st))
        if unboxed:
            pid, st = unboxed[0]
            where_ = os.path.relpath(d, os.path.dirname(top))
            checks.append(Check(
                f"cgroup {where_}", False, f"only this node's workers, or processes boxed as workers, under {parent}",
                f"{len(unboxed)} unboxed process(es) of no worker of this node, e.g. pid {pid} ({st.get('Name')}): "
                f"uid {st.get('Uid', '?').split()[0]}, CapEff {st.get('CapEff')}, NoNewPrivs {st.get('NoNewPrivs')}, "
                f"Seccomp {st.get('Seccomp')}"))
    if budget[0] <= 0:
        checks.append(Check("cgroups", False, f"at most {MAX_CGROUPS} cgroups under {parent}", "more: not all read"))
    return checks


def parent_report(node: Node) -> AuditReport | None:
    """The failures of ``parent_checks`` as one report (None when there are none)."""
    checks = parent_checks(node)
    return AuditReport(REPORT, "", (), tuple(checks)) if checks else None
