"""A plan as text for people (``explain --format text``): what the worker gets, in words.

The other renderers belong to whoever runs the plan: the Engine API body and the ``docker run``
line to the docker runtime (``_runtimes.docker.render``), the OCI config to runc's
(``_runtimes.runc.oci``), Storm's own line to the Storm adapter (``_storm``).
"""

from __future__ import annotations

import shlex

from .plan import Plan


def text_summary(plan: Plan, unused_keys: tuple[str, ...] = (), notes: tuple[str, ...] = ()) -> str:
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
    if notes:
        out.append("differences from Storm")
        out += [f"  {n}" for n in notes]
    out += [f"Storm key not used by berth: {k}" for k in unused_keys]
    return "\n".join(out)
