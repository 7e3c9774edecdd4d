"""Audit a running worker from the host: does the kernel enforce what berth would plan for it?

Nothing is taken from the worker's word, nor from the engine's account of what it applied:
capabilities, no_new_privs, seccomp and ids come from ``/proc/<pid>/status`` of every process
in the worker's cgroup; mounts from ``/proc/<pid>/mountinfo``; limits from the cgroup's own
files (v1 or v2); the network namespace from ``/proc/<pid>/ns/net``.

The expectation is not the container's own configuration (a container started by hand would
then audit itself clean) but the plan berth would make *now* for the request the container
stands for: the runtime's ``describe`` gives the ids and the user (labels) and the resources it
applied, and the node's config and policy do the rest, exactly as at launch. A container
whose request berth would refuse fails the ``plan`` check and is still audited against the
settings berth applies to every worker (capabilities, no-new-privileges, seccomp, read-only
root, no writable mount, network).

Mount sources are matched through the mount table, not through paths: the kernel records for
each mount the device and the directory of that device that is mounted (mountinfo's ``root``),
and the same pair is computed for the planned source from the host's own table. Walking a path
inside the worker's mount namespace (``/proc/<pid>/root/...``) would follow whatever the worker
put in the directories it may write; the mount table is the kernel's and cannot be forged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._core.hostfacts import HostFacts, format_cpu_list, parse_cpu_list
from .._core.plan import Plan, Security
from .._core.spec import WorkerSpec, spec_from_mapping
from .._exceptions import BerthError, EngineError, WorkerNotFound
from .._linux import cgroup as _cgroup
from .._linux.mountinfo import MountEntry, filesystem_path, reachable, read_mountinfo, top_mount
from .._linux.proc import read_status
from .._paths import is_under
from .check import Check, Locator, read_check

if TYPE_CHECKING:
    from .node import Node


NO_CAPS = "0000000000000000"
SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}
PSEUDO_RW = {("/proc", "proc"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"), ("/dev/shm", "tmpfs"),
             ("/dev/mqueue", "mqueue")}
"""The engine's own writable pseudo filesystems, private to the container (the sensitive parts
of /proc are re-mounted read-only or masked by the engine)."""
PLACEHOLDER_COMMAND = ("true",)
"""The command only shapes the worker script, which nothing here audits; the re-plan needs one."""


@dataclass(frozen=True)
class AuditReport:
    worker_id: str
    container_id: str
    pids: tuple[int, ...]
    """The worker's processes when the audit read them (host pids), the main one first."""
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "container_id": self.container_id, "ok": self.ok,
                "pids": list(self.pids), "checks": [asdict(c) for c in self.checks]}


# -- the request a container stands for ---------------------------------------------------------

def spec_from_request(request: Mapping[str, Any]) -> WorkerSpec:
    """The request berth would have been given for a worker, from what its runtime applied."""
    return spec_from_mapping({"command": PLACEHOLDER_COMMAND, **request}, source="container")


# -- reading the kernel's view ----------------------------------------------------------------

def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()


def worker_pids(main_pid: int, locate: Locator = _cgroup.cgroup_dir) -> list[int]:
    """Every process in the main process's cgroup, the main one first."""
    for controller in ("pids", "memory"):
        try:
            d, _ = locate(main_pid, controller)
            text = _read(os.path.join(d, "cgroup.procs"))
        except (OSError, ValueError):
            continue
        pids = [int(p) for p in text.split()]
        return [main_pid] + [p for p in pids if p != main_pid]
    return [main_pid]


def host_netns(proc: str = "/proc") -> tuple[int, str]:
    """The host's network namespace: pid 1's, or berth's own where pid 1's cannot be read."""
    for who, label in (("1", "pid 1"), ("self", f"berth, pid {os.getpid()}")):
        try:
            return os.stat(os.path.join(proc, who, "ns", "net")).st_ino, label
        except OSError:
            continue
    raise EngineError("network", "cannot read the host's network namespace")


# -- checks --------------------------------------------------------------------------------------

def _per_process(name: str, expected: str, values: Mapping[int, str],
                 accept: Callable[[str], bool] | None = None) -> Check:
    good = accept or (lambda v: v == expected)
    bad = {pid: v for pid, v in values.items() if not good(v)}
    if not bad:
        distinct = sorted(set(values.values()))
        observed = ", ".join(distinct)
        if len(values) > 1:
            observed += f" (all {len(values)} processes)"
        return Check(name, True, expected, observed)
    shown = [f"pid {pid}: {v}" for pid, v in list(bad.items())[:4]]
    if len(bad) > 4:
        shown.append(f"… {len(bad) - 4} more")
    return Check(name, False, expected, "; ".join(shown))


def _ids(field: str) -> str:
    return " ".join(field.split())


def process_checks(statuses: Mapping[int, Mapping[str, str]], plan: Plan | None, security: Security,
                   min_uid: int) -> list[Check]:
    """Capabilities, no_new_privs, seccomp and ids of every process of the worker."""
    def col(key: str, fmt: Callable[[str], str] = lambda v: v) -> dict[int, str]:
        return {pid: fmt(st.get(key, "missing")) for pid, st in statuses.items()}

    caps = NO_CAPS if "ALL" in security.cap_drop else "the engine's set minus " + ",".join(security.cap_drop)
    checks = [_per_process(f"caps.{what}", caps, col(key))
              for what, key in (("effective", "CapEff"), ("permitted", "CapPrm"), ("bounding", "CapBnd"),
                                ("ambient", "CapAmb"))]
    checks.append(_per_process("no_new_privs", "1" if security.no_new_privileges else "0", col("NoNewPrivs")))
    checks.append(_per_process("seccomp", "2 (filter)",
                               col("Seccomp", lambda v: f"{v} ({SECCOMP_MODES.get(v, 'unknown')})")))
    if plan is not None:
        ident = plan.identity
        checks.append(_per_process("uid", _ids(f"{ident.uid} " * 4), col("Uid", _ids)))
        checks.append(_per_process("gid", _ids(f"{ident.gid} " * 4), col("Gid", _ids)))
        want = ",".join(str(g) for g in sorted(set(ident.groups)))
        checks.append(_per_process("groups", want,
                                   col("Groups", lambda v: ",".join(str(g) for g in sorted({int(x) for x in
                                                                                          v.split()})))))
    else:
        def not_root(v: str) -> bool:
            return all(x.isdigit() and int(x) >= min_uid for x in v.split())
        checks.append(_per_process("uid", f"every uid >= {min_uid} (never root)", col("Uid", _ids), not_root))
    return checks


def _host_path(entry: MountEntry, host_table: list[MountEntry], prefer: str) -> str:
    """Where on the host a worker's mount comes from, as a path (``prefer`` if it is one)."""
    candidates = []
    for h in reachable(host_table):
        if h.device != entry.device:
            continue
        if not is_under(entry.root, h.root):
            continue
        rel = os.path.relpath(entry.root, h.root)
        candidates.append(os.path.normpath(os.path.join(h.mount_point, rel)))
    if prefer in candidates:
        return prefer
    return candidates[0] if candidates else f"device {entry.device} path {entry.root}"


def mount_checks(table: list[MountEntry], host_table: list[MountEntry], plan: Plan | None) -> list[Check]:
    """Root read-only, every planned mount from its planned source with its mode, nothing else writable."""
    checks = []
    root = top_mount(table, "/")
    checks.append(Check("rootfs.read_only", root is not None and root.read_only, "ro",
                        "not found" if root is None else f"{'ro' if root.read_only else 'rw'} ({root.fstype})"))
    rw_targets: set[str] = set()
    if plan is not None:
        for m in plan.mounts:
            mode = "ro" if m.read_only else "rw"
            source = os.path.realpath(m.source)
            if not m.read_only:
                rw_targets.add(m.target)
            entry = top_mount(table, m.target)
            if entry is None:
                checks.append(Check(f"mount {m.target}", False, f"{mode} {source}", "not mounted"))
                continue
            seen_mode = "ro" if entry.read_only else "rw"
            origin = filesystem_path(host_table, source)
            ok = seen_mode == mode and origin == (entry.device, os.path.normpath(entry.root))
            checks.append(Check(f"mount {m.target}", ok, f"{mode} {source}",
                                f"{seen_mode} {_host_path(entry, host_table, source)}"))
    dev = top_mount(table, "/dev")
    offenders = []
    for e in reachable(table):
        if e.read_only or e.mount_point in rw_targets or (e.mount_point, e.fstype) in PSEUDO_RW:
            continue
        if dev is not None and e.device == dev.device and e.root == "/null" and e.mount_point.startswith("/proc/"):
            continue  # the engine masks a /proc file with its /dev/null
        kind = {"sysfs": " (writable sysfs)", "cgroup": " (writable cgroupfs)",
                "cgroup2": " (writable cgroupfs)"}.get(e.fstype, "")
        offenders.append(f"{e.mount_point} {e.fstype}{kind}")
    allowed = f"{len(rw_targets)} planned rw mounts" if plan is not None else "no plan, so none"
    checks.append(Check("mounts.no_other_writable", not offenders,
                        f"rw only: {allowed}, /proc /dev /dev/pts /dev/shm /dev/mqueue",
                        "; ".join(offenders) if offenders else "none"))
    return checks


def _limit(text: str) -> int | None:
    return None if text == "max" or text == "-1" else int(text)


def cgroup_checks(pid: int, plan: Plan, host: HostFacts, locate: Locator = _cgroup.cgroup_dir) -> list[Check]:
    """Memory, swap, cpu quota, cpuset and pids limits, read from the worker's own cgroup."""
    r = plan.resources
    checks: list[Check] = []

    def attempt(name: str, expected: str, fn: Callable[[], tuple[bool, str]]) -> None:
        checks.append(read_check(name, expected, fn))

    def mib(n: int | None) -> str:
        return "unlimited" if n is None else f"{n} ({n / 2**20:g} MiB)"

    def memory() -> tuple[bool, str]:
        d, v = locate(pid, "memory")
        got = _limit(_read(os.path.join(d, "memory.limit_in_bytes" if v == 1 else "memory.max")))
        if v == 1 and got is not None and got >= 2**62:
            got = None  # v1 writes "no limit" as a huge page-rounded number
        return got == r.memory_bytes, mib(got)

    def swap() -> tuple[bool, str]:
        d, v = locate(pid, "memory")
        name = "memory.memsw.limit_in_bytes" if v == 1 else "memory.swap.max"
        path = os.path.join(d, name)
        if not os.path.exists(path):
            return True, f"{name} absent: this kernel does not account swap"
        got = _limit(_read(path))
        if v == 1:
            if got is not None and got >= 2**62:
                got = None
            return got == r.memory_bytes, f"memory+swap {mib(got)}"
        return got == 0, f"swap {mib(got)}"

    def cpu() -> tuple[bool, str]:
        d, v = locate(pid, "cpu")
        if v == 1:
            quota, period = _read(os.path.join(d, "cpu.cfs_quota_us")), _read(os.path.join(d, "cpu.cfs_period_us"))
        else:
            quota, period = _read(os.path.join(d, "cpu.max")).split()
        q, p = _limit(quota), int(period)
        if q is None:
            return False, f"unlimited (period {p})"
        return q * 100 == r.cpu_percent * p, f"{q * 100 / p:g}% ({q}/{p})"

    def cpuset(kind: str, want: frozenset[int]) -> Callable[[], tuple[bool, str]]:
        def read() -> tuple[bool, str]:
            d, v = locate(pid, "cpuset")
            names = ([f"cpuset.effective_{kind}", f"cpuset.{kind}"] if v == 1
                     else [f"cpuset.{kind}.effective", f"cpuset.{kind}"])
            path = next((os.path.join(d, n) for n in names if os.path.exists(os.path.join(d, n))),
                        os.path.join(d, names[-1]))
            got = parse_cpu_list(_read(path))
            return got == want, format_cpu_list(tuple(sorted(got))) or "empty"
        return read

    def pids() -> tuple[bool, str]:
        d, _ = locate(pid, "pids")
        got = _read(os.path.join(d, "pids.max"))
        return got == str(r.pids_limit), got

    attempt("memory.limit", mib(r.memory_bytes), memory)
    attempt("memory.swap", f"no swap beyond the memory limit ({r.memory_mb} MiB)", swap)
    attempt("cpu.quota", f"{r.cpu_percent}% ({r.cpu_percent * 1000}/100000)", cpu)
    want_cpus = frozenset(r.cores) if r.cores else host.cpus
    want_mems = frozenset({r.numa_node}) if r.numa_node is not None else host.mems
    attempt("cpuset.cpus", format_cpu_list(tuple(sorted(want_cpus))) + ("" if r.cores else " (all: not pinned)"),
            cpuset("cpus", want_cpus))
    attempt("cpuset.mems", format_cpu_list(tuple(sorted(want_mems))) + ("" if r.numa_node is not None
                                                                        else " (all: not pinned)"),
            cpuset("mems", want_mems))
    attempt("pids.limit", str(r.pids_limit), pids)
    return checks


def namespace_checks(pid: int, security: Security, proc: str = "/proc",
                     host_ns: tuple[int, str] | None = None) -> list[Check]:
    checks = []
    try:
        path = _cgroup.cgroup_path(pid, "memory", proc)
        parent = security.cgroup_parent.rstrip("/") + "/"
        checks.append(Check("cgroup.parent", path.startswith(parent), f"under {parent}", path))
    except (OSError, ValueError) as exc:
        checks.append(Check("cgroup.parent", False, f"under {security.cgroup_parent}/", f"cannot read: {exc}"))
    try:
        ino, who = host_ns or host_netns(proc)
        mine = os.stat(os.path.join(proc, str(pid), "ns", "net")).st_ino
        if security.network == "host":
            checks.append(Check("network", mine == ino, f"host: net:[{ino}] ({who})", f"net:[{mine}]"))
        else:
            checks.append(Check("network", mine != ino, f"{security.network}: not the host's net:[{ino}]",
                                f"net:[{mine}]"))
    except (OSError, EngineError) as exc:
        checks.append(Check("network", False, security.network, f"cannot read: {exc}"))
    return checks


def audit_processes(pids: Sequence[int], plan: Plan | None, security: Security, host: HostFacts, min_uid: int,
                    *, proc: str = "/proc", locate: Locator = _cgroup.cgroup_dir,
                    host_mounts: list[MountEntry] | None = None,
                    host_ns: tuple[int, str] | None = None) -> list[Check]:
    """Every check of one worker whose processes are ``pids`` (the main one first)."""
    statuses: dict[int, dict[str, str]] = {}
    for pid in pids:
        try:
            statuses[pid] = read_status(pid, proc)
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended between the listing and the read
    if not statuses:
        return [Check("running", False, "running", "its processes ended during the audit")]
    main = next(iter(statuses))
    checks = [Check("running", True, "running", f"{len(statuses)} process(es), main pid {main}")]
    checks += process_checks(statuses, plan, security, min_uid)
    try:
        table = read_mountinfo(main, proc)
        host_table = host_mounts if host_mounts is not None else read_mountinfo("self", proc)
        checks += mount_checks(table, host_table, plan)
    except OSError as exc:
        checks.append(Check("mounts", False, "readable mount table", f"cannot read: {exc}"))
    if plan is not None:
        checks += cgroup_checks(main, plan, host, locate)
    checks += namespace_checks(main, security, proc, host_ns)
    return checks


# -- entry points -----------------------------------------------------------------------------

def audit_worker(node: Node, worker_id: str) -> AuditReport:
    """Audit one worker of ``node``; raises ``WorkerNotFound`` when there is none."""
    desc = node.describe(worker_id)
    cid = desc.worker.container_id
    config = node.config
    plan: Plan | None = None
    try:
        plan = node.plan(spec_from_request(desc.request))
        checks = [Check("plan", True, "the request passes the node's policy",
                        f"user {plan.identity.user}, image {plan.image}, {plan.resources.cpu_percent}% cpu, "
                        f"{plan.resources.memory_mb} MiB, pids {plan.resources.pids_limit}")]
    except BerthError as exc:
        checks = [Check("plan", False, "the request passes the node's policy", f"refused: {exc}")]
    security = plan.security if plan is not None else Security(
        network=config.container.network, cgroup_parent=config.container.cgroup_parent,
        seccomp_profile=config.container.seccomp_profile or None)
    pid = desc.pid or 0
    if not desc.worker.running or pid <= 0:
        checks.append(Check("running", False, "running", desc.worker.state.value))
        return AuditReport(worker_id, cid, (), tuple(checks))
    if not node.runtime.capabilities.isolated:  # nothing of what the checks below read was applied
        checks.append(Check("isolation", False, "namespaces, limits, no capabilities, seccomp",
                            f"none: the {node.runtime.name} runtime declares no isolation"))
        return AuditReport(worker_id, cid, (pid,), tuple(checks))
    pids = worker_pids(pid)
    checks += audit_processes(pids, plan, security, node.host, config.node.min_uid)
    from .audit_limits import maxima_checks

    checks += maxima_checks(pid, config, node.host, desc.logs)
    return AuditReport(worker_id, cid, tuple(pids), tuple(checks))


def audit_all(node: Node) -> list[AuditReport]:
    """Audit every running worker of ``node`` (an ended worker has no process left to audit)."""
    reports = []
    for w in node.ps():
        if not w.running:
            continue
        try:
            reports.append(audit_worker(node, w.worker_id))
        except WorkerNotFound:
            continue  # removed since the listing
    return reports


def report_lines(reports: Iterable[AuditReport]) -> list[str]:
    """One line per check, then a summary line per worker; what ``berth audit`` prints."""
    out = []
    for rep in reports:
        for c in rep.checks:
            out.append(c.line(f"{rep.worker_id} "))
        failed = rep.failed
        out.append(f"{rep.worker_id}: {len(rep.checks)} checks, "
                   + (f"{len(failed)} FAILED: {', '.join(c.name for c in failed)}" if failed else "all passed"))
    return out
