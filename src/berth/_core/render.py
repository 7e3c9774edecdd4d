"""Renderers: a plan as Storm's ``docker run`` argv, as an Engine API create body, as text (the OCI
config is in ``oci``).

Pure translations. Parity with Storm is checked token by token, so the Storm renderer follows
Storm's builder order exactly; what berth adds (pids limit, no swap beyond the memory limit,
labels) comes after Storm's flags and is left out by ``storm=True``.
"""

from __future__ import annotations

import shlex
from typing import Any

from .._exceptions import ConfigError
from .plan import Plan
from .seccomp import Filters, read_profile
from .stormline import StormLine, java_double


def _mount_token(source: str, target: str, read_only: bool) -> str:
    return f"{source}:{target}:ro" if read_only else f"{source}:{target}"


def _berth_values(plan: Plan) -> StormLine:
    """What berth launches, in the shape of Storm's line."""
    r, s = plan.resources, plan.security
    return StormLine(mounts=tuple((m.source, m.target, m.read_only) for m in plan.mounts), cores=r.cores,
                     mems=r.cpuset_mems or None, cgroup_parent=s.cgroup_parent, workdir=plan.workdir,
                     cid_file=plan.cid_file, seccomp=s.seccomp_profile, cpu_percent=r.cpu_percent,
                     memory_mb=r.memory_mb, argv=plan.argv, network=s.network)


def docker_run_argv(plan: Plan, storm: bool = False) -> list[str]:
    """Tokens after ``docker``: Storm's exactly (DockerManager.launchWorkerProcess, in
    DockerRunCommand's order), then berth's additions unless ``storm``.

    Storm joins its list with spaces; its two-word items (``--group-add <gid>``, ``--security-opt
    …``) are two tokens here, as a shell splits them."""
    s = plan.security
    v = plan.storm if storm and plan.storm is not None else _berth_values(plan)
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
    if not storm:
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


def docker_run_line(plan: Plan, storm: bool = False) -> str:
    return shlex.join(["docker", *docker_run_argv(plan, storm=storm)])


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


def text_summary(plan: Plan, unused_keys: tuple[str, ...] = ()) -> str:
    """A readable account of what the worker gets, for people reviewing a launch; with a
    storm.yaml, where berth differs from Storm and which of its keys berth does not use."""
    r, s, ident = plan.resources, plan.security, plan.identity
    out = [
        f"worker    {plan.worker_id}  (topology {plan.topology_id}, port {plan.port}, node {plan.node})",
        f"image     {plan.image}",
        f"user      {ident.user}  uid={ident.uid} gid={ident.gid} groups={','.join(map(str, ident.groups))}",
        f"command   {shlex.join(plan.command)}",
        f"runs as   {shlex.join(plan.argv)}  (workdir {plan.workdir})",
        "limits",
        f"  cpu       {r.cpu_percent}% ({r.cpus!r} cpus)",
        f"  memory    {r.memory_mb} MiB, no swap beyond it",
        f"  pids      {r.pids_limit}",
        f"  cpuset    cpus={r.cpuset_cpus or 'any'} mems={r.cpuset_mems or 'any'}",
        f"  output    {r.logs} kept",
        "security",
        f"  root fs   {'read-only' if s.read_only_root else 'WRITABLE'}",
        f"  caps      drop {','.join(s.cap_drop)}",
        f"  no-new-privileges {'yes' if s.no_new_privileges else 'NO'}",
        f"  init      {'tini as PID 1 (signals reach the worker, orphans reaped)' if s.init else 'none'}",
        f"  seccomp   {s.seccomp_profile or 'berth default (runc.default_seccomp; no namespaces, keyring, io_uring)'}",
        f"  network   {s.network}",
        f"  cgroup    parent {s.cgroup_parent}",
        "mounts",
    ]
    width = max(len(m.target) for m in plan.mounts)
    for m in plan.mounts:
        src = "" if m.source == m.target else f"  <- {m.source}"
        out.append(f"  {'ro' if m.read_only else 'rw'}  {m.target:<{width}}  [{m.role}]{src}")
    if plan.env:
        out.append("env")
        out += [f"  {k}={v!r}" for k, v in plan.env]
    out.append("labels")
    out += [f"  {k}={v}" for k, v in plan.labels]
    if plan.notes:
        out.append("differences from Storm")
        out += [f"  {n}" for n in plan.notes]
    out += [f"Storm key not used by berth: {k}" for k in unused_keys]
    return "\n".join(out)
