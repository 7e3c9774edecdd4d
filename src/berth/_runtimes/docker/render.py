"""The docker runtime's renderers: a plan as the Engine API create body it sends, and as the
``docker run`` line that would make the same container (``explain``), in Storm's order.

Pure translations. The line follows Storm's builder order exactly (``DockerRunCommand``), so the
Storm adapter renders Storm's own line with it from Storm's values (``LineValues``); what berth
adds (pids limit, no swap beyond the memory limit, log limits, init, labels) comes after Storm's
flags.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..._core.plan import Plan
from ..._exceptions import ConfigError
from ..seccomp import Filters, read_profile

LineMount = tuple[str, str, bool]
"""(source, target, read-only)"""


@dataclass(frozen=True)
class LineValues:
    """The values a ``docker run`` line carries for one worker: berth's (``berth_values``), or
    Storm's as its code spells them (the Storm adapter's)."""

    mounts: tuple[LineMount, ...]
    cores: tuple[int, ...]
    mems: str | None
    cgroup_parent: str
    workdir: str
    cid_file: str
    seccomp: str | None
    cpu_percent: int
    memory_mb: int | None
    """None when the line carries no ``--memory`` (Storm with storm.cgroup.memory.enforcement.enable false)."""
    argv: tuple[str, ...]
    network: str


def java_double(value: float) -> str:
    """``Double.toString``, as Storm formats ``--cpus``: plain decimal in [1e-3, 1e7) (where it
    agrees with Python's shortest repr), else Java's ``d.dddE<exp>``."""
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(float(value))
    sign, digits, exp = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    mantissa = text[0] + "." + (text[1:] or "0")
    return ("-" if sign else "") + f"{mantissa}E{exp + len(text) - 1}"


def _mount_token(source: str, target: str, read_only: bool) -> str:
    return f"{source}:{target}:ro" if read_only else f"{source}:{target}"


def berth_values(plan: Plan) -> LineValues:
    """What berth launches, in the shape of Storm's line."""
    r, s = plan.resources, plan.security
    return LineValues(mounts=tuple((m.source, m.target, m.read_only) for m in plan.mounts), cores=r.cores,
                     mems=r.cpuset_mems or None, cgroup_parent=s.cgroup_parent, workdir=plan.workdir,
                     cid_file=plan.cid_file, seccomp=s.seccomp_profile, cpu_percent=r.cpu_percent,
                     memory_mb=r.memory_mb, argv=plan.argv, network=s.network)


def docker_run_argv(plan: Plan, values: LineValues | None = None) -> list[str]:
    """Tokens after ``docker``: DockerManager.launchWorkerProcess's flags in DockerRunCommand's
    order, with berth's values, then berth's additions; with ``values`` (Storm's, from the Storm
    adapter), Storm's line exactly and nothing added.

    Storm joins its list with spaces; its two-word items (``--group-add <gid>``, ``--security-opt
    …``) are two tokens here, as a shell splits them."""
    s = plan.security
    v = values or berth_values(plan)
    argv = ["run", f"--name={plan.worker_id}", f"--user={plan.identity.docker_user}", "-d", f"--net={v.network}"]
    if s.read_only_root:
        argv.append("--read-only")
    for source, target, read_only in v.mounts:
        argv += ["-v", _mount_token(source, target, read_only)]
    if v.cores:
        argv.append(f"--cpuset-cpus={','.join(map(str, v.cores))}")
    if v.mems is not None:
        argv.append(f"--cpuset-mems={v.mems}")
    argv.append(f"--cgroup-parent={v.cgroup_parent}")
    for gid in plan.identity.groups:
        argv += ["--group-add", str(gid)]
    argv += [f"--workdir={v.workdir}", f"--cidfile={v.cid_file}"]
    argv += [f"--cap-drop={cap}" for cap in s.cap_drop]
    if s.no_new_privileges:
        argv += ["--security-opt", "no-new-privileges"]
    if v.seccomp:
        argv += ["--security-opt", f"seccomp={v.seccomp}"]
    argv.append(f"--cpus={java_double(v.cpu_percent / 100.0)}")
    if v.memory_mb is not None:
        argv.append(f"--memory={v.memory_mb}m")
    if values is None:
        argv += berth_extra_flags(plan)
    argv += [plan.image, *v.argv]
    return argv


def berth_extra_flags(plan: Plan) -> list[str]:
    """Flags berth adds beyond Storm; listed in docs/explain.md."""
    r = plan.resources
    flags = [f"--pids-limit={r.pids_limit}", f"--memory-swap={r.memory_mb}m", "--log-driver=json-file",
             "--log-opt", f"max-size={r.logs.file_mb}m", "--log-opt", f"max-file={r.logs.files}"]
    if plan.security.init:
        flags.append("--init")
    flags += [f"--label={k}={v}" for k, v in plan.labels]
    return flags


def docker_run_line(plan: Plan, values: LineValues | None = None) -> str:
    return shlex.join(["docker", *docker_run_argv(plan, values)])


def read_seccomp(plan: Plan, filters: Filters | None = None) -> str | None:
    """The text of the plan's seccomp profile, which the Engine API takes inline; without one,
    berth's own filter from ``filters`` (None without ``filters``: the engine's default profile,
    which allows io_uring on engines before moby 25)."""
    if not plan.security.seccomp_profile:
        return None if filters is None else filters.default_json()
    data = read_profile(plan.security.seccomp_profile, "container.seccomp_profile")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("container.seccomp_profile", f"{plan.security.seccomp_profile} is not UTF-8 text") from exc


def engine_create_body(plan: Plan, seccomp_json: str | None = None) -> dict[str, Any]:
    """The body of ``POST /containers/create?name=<worker_id>`` that the docker runtime sends.

    Mounts go in ``HostConfig.Mounts`` rather than ``Binds``: a bind string splits on ':' and
    the structured form does not, and it refuses a missing source instead of creating it.
    ``MemorySwap`` equals ``Memory`` so the memory limit cannot be exceeded through swap.
    """
    r, s = plan.resources, plan.security
    security_opt = ["no-new-privileges"] if s.no_new_privileges else []
    if seccomp_json is not None:
        security_opt.append(f"seccomp={seccomp_json}")
    elif s.seccomp_profile:
        raise ValueError("the plan names a seccomp profile; pass its JSON text")
    host: dict[str, Any] = {
        "NetworkMode": s.network,
        "ReadonlyRootfs": s.read_only_root,
        "Mounts": [
            {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only,
             "BindOptions": {"Propagation": "rprivate"}}
            for m in plan.mounts
        ],
        "CgroupParent": s.cgroup_parent,
        "GroupAdd": [str(g) for g in plan.identity.groups],
        "CapDrop": list(s.cap_drop),
        "SecurityOpt": security_opt,
        "NanoCpus": r.nano_cpus,
        "Memory": r.memory_bytes,
        "MemorySwap": r.memory_bytes,
        "PidsLimit": r.pids_limit,
        "Privileged": False,
        "Init": s.init,
        "LogConfig": {"Type": "json-file",
                      "Config": {"max-size": f"{r.logs.file_mb}m", "max-file": str(r.logs.files)}},
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
    }
    if r.cores:
        host["CpusetCpus"] = r.cpuset_cpus
    if r.numa_node is not None:
        host["CpusetMems"] = r.cpuset_mems
    return {
        "Image": plan.image,
        "User": plan.identity.docker_user,
        "Cmd": list(plan.argv),
        "WorkingDir": plan.workdir,
        "Labels": plan.label_map,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": host,
    }
