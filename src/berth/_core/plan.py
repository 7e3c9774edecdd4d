"""The launch plan: one immutable, runtime-neutral value that says exactly what a worker gets.

All policy is applied here, once, by a pure function of (spec, config, identity, host facts).
Renderers and runtimes only translate a plan; they never decide. The only I/O is checking that
operator-configured paths exist (mount sources, the cgroup root, the seccomp profile) and
resolving the mount sources' symlinks, because a mount whose meaning changes behind a symlink is
exactly what a reviewer needs to see resolved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from .._exceptions import ConfigError, PolicyError, SpecError
from .._paths import is_under
from . import limits
from .config import ImagesSection, NodeConfig
from .fields import valid_image
from .hostfacts import HostFacts, format_cpu_list
from .identity import Identity, check_identity, resolve_identity
from .labels import (
    LABEL_CPU,
    LABEL_MEMORY,
    LABEL_NODE,
    LABEL_OWNER,
    LABEL_PIDS,
    LABEL_PORT,
    LABEL_SPEC,
    LABEL_TOPOLOGY,
    LABEL_USER,
    LABEL_WORKER,
)
from .layout import Layout, layout
from .limits import key_of
from .script import render_script
from .spec import WorkerSpec, spec_digest
from .stormconf import swap_hint

TMP_TARGET = "/tmp"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    role: str
    """Why the mount is there (``worker-root``, ``configured-ro``…): shown by ``explain``."""


@dataclass(frozen=True)
class LogLimits:
    """How much of a worker's output is kept: at most ``files`` files of ``file_mb`` MiB each, the
    oldest dropped first. Set by the node (``container.log_max_size_mb``/``log_max_files``), never
    by a request: a worker must not be able to fill the engine's disk with its output."""

    file_mb: int = 20
    files: int = 5

    @property
    def file_bytes(self) -> int:
        return self.file_mb * 1024 * 1024

    def __str__(self) -> str:
        return f"at most {self.files} file(s) of {self.file_mb} MiB"


@dataclass(frozen=True)
class Resources:
    cpu_percent: int
    memory_mb: int
    pids_limit: int
    cores: tuple[int, ...] = ()
    numa_node: int | None = None
    logs: LogLimits = LogLimits()

    @property
    def cpus(self) -> float:
        return self.cpu_percent / 100.0

    @property
    def nano_cpus(self) -> int:
        return self.cpu_percent * 10_000_000

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024

    @property
    def cpuset_cpus(self) -> str:
        return format_cpu_list(self.cores)

    @property
    def cpuset_mems(self) -> str:
        return "" if self.numa_node is None else str(self.numa_node)


@dataclass(frozen=True)
class Security:
    network: str
    cgroup_parent: str
    seccomp_profile: str | None
    read_only_root: bool = True
    cap_drop: tuple[str, ...] = ("ALL",)
    no_new_privileges: bool = True
    init: bool = True
    """A minimal init (the engine's tini) as PID 1: the kernel ignores SIGTERM sent to a PID 1 that
    installed no handler, so without it a kill would always wait out the grace period; it also
    reaps the worker's orphaned children."""


@dataclass(frozen=True)
class Plan:
    worker_id: str
    topology_id: str
    port: int
    node: str
    image: str
    identity: Identity
    mounts: tuple[Mount, ...]
    resources: Resources
    security: Security
    layout: Layout
    shell: str
    script: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...] = field(default=())

    @property
    def workdir(self) -> str:
        return self.layout.worker_root

    @property
    def cid_file(self) -> str:
        return self.layout.cid_file

    @property
    def script_path(self) -> str:
        return self.layout.script

    @property
    def argv(self) -> tuple[str, str]:
        """What the container runs: the configured shell on the worker script, as Storm does."""
        return (self.shell, self.layout.script)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def choose_image(requested: str | None, images: ImagesSection) -> str:
    """Storm's rule: the request's image, else the node default; pattern first, then allow-list."""
    if not requested:
        if images.default is None:
            raise PolicyError("image", "no image requested and the node has no default (images.default)")
        return images.default
    if not valid_image(requested):
        raise SpecError("image", f"{requested!r} is not a valid image reference")
    if requested == images.default or "*" in images.allowed or requested in images.allowed:
        return requested
    if not images.allowed:
        raise PolicyError("image", f"{requested!r} refused: this node allows only its default image")
    raise PolicyError("image", f"{requested!r} is not in the node's allowed images")


def forbidden_reason(source: str, forbidden: tuple[str, ...]) -> str | None:
    """Why ``source`` may not be mounted, or None. Both the given and the resolved path count."""
    candidates = {os.path.normpath(source), os.path.realpath(source)}
    for bad in forbidden:
        bad_forms = {os.path.normpath(bad), os.path.realpath(bad)}
        for src in candidates:
            for b in bad_forms:
                if is_under(src, b):
                    return f"{source} is {bad} or lies under it (forbidden)"
                if is_under(b, src):
                    return f"{source} contains the forbidden path {bad}"
    return None


def _configured_source(path: str, field_name: str, forbidden: tuple[str, ...], refused: list[PolicyError]) -> str:
    if not os.path.isabs(path):
        raise ConfigError(field_name, f"{path} must be absolute")
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise ConfigError(field_name, f"{path} does not exist on this node")
    reason = forbidden_reason(path, forbidden)
    if reason:
        refused.append(PolicyError(field_name, reason))
    return real


def _storm_resources(spec: WorkerSpec, config: NodeConfig) -> WorkerSpec:
    """Storm's supervisor-side overrides: ``storm.worker.cgroup.cpu.limit`` replaces the CPU
    (OciContainerManager.reserveResourcesForWorker) and ``supervisor.numa.meta`` pins by port
    (BasicContainer.launch, SupervisorUtils.getNumaIdForPort)."""
    s = config.storm
    if s is None:
        return spec
    update: dict[str, object] = {}
    if s.worker_cpu_limit is not None:
        update["cpu_percent"] = s.worker_cpu_limit
    zone = s.zone_for(spec.port)
    if zone is not None:
        if (spec.cores is not None and spec.cores != zone.cores) or spec.numa_node not in (None, int(zone.id)):
            raise PolicyError("cores", f"port {spec.port} is bound to NUMA zone {zone.id} by supervisor.numa.meta; "
                              "the request may not pin other cores or memory nodes")
        update.update(cores=zone.cores or None, numa_node=int(zone.id))
    return spec.model_copy(update=update)


def _resources(spec: WorkerSpec, config: NodeConfig, host: HostFacts, refused: list[PolicyError]) -> Resources:
    c, s = config.container, config.storm
    # A value from the storm.yaml is reported under its key, not as the request's fault.
    cpu_key = key_of(config, "storm.worker_cpu_limit") if s and s.worker_cpu_limit else "cpu_percent"
    pin_key = key_of(config, "storm.numa") if s and s.zone_for(spec.port) else "cores"
    cpu = spec.cpu_percent if spec.cpu_percent is not None else c.cpu_percent
    if cpu > host.cpu_count * 100:
        raise PolicyError(cpu_key, f"{cpu} is more than this node's {host.cpu_count} cpus "
                          f"({host.cpu_count * 100})")
    pids = limits.pids_for(spec.pids_limit, config, host)
    cores = spec.cores or ()
    missing = sorted(set(cores) - host.cpus)
    if missing:
        raise PolicyError(pin_key, f"cpu {missing[0]} does not exist on this node "
                          f"(online: {format_cpu_list(tuple(sorted(host.cpus)))})")
    if spec.numa_node is not None and spec.numa_node not in host.mems:
        raise PolicyError("numa_node" if pin_key == "cores" else pin_key,
                          f"memory node {spec.numa_node} does not exist on this node")
    try:
        memory = limits.memory_for(spec.memory_mb, config, host)
    except PolicyError as exc:  # the node's maximum is berth's hardening; Storm has none and would launch
        refused.append(exc)
        memory = spec.memory_mb or config.container.memory_mb
    return Resources(cpu_percent=cpu, memory_mb=memory, pids_limit=pids, cores=tuple(cores),
                     numa_node=spec.numa_node, logs=LogLimits(c.log_max_size_mb, c.log_max_files))


def _mounts(config: NodeConfig, lay: Layout, refused: list[PolicyError]) -> tuple[Mount, ...]:
    """Storm's mounts in Storm's order, then the operator's read-only and read-write lists."""
    c = config.container
    forbidden = config.forbidden_mounts
    mounts: list[Mount] = []
    if c.mount_cgroup_root:
        # Exempt from the forbidden list: berth adds it itself, read-only, as Storm does.
        if not os.path.exists(c.cgroup_root):
            root_key, parent_key = key_of(config, "container.cgroup_root"), key_of(config, "container.cgroup_parent")
            raise ConfigError(root_key, f"{c.cgroup_root} does not exist on this node"
                              + swap_hint(c.cgroup_root, c.cgroup_parent, root_key, parent_key))
        mounts.append(Mount(c.cgroup_root, c.cgroup_root, True, "cgroup-root"))
    if config.node.install_dir:
        home = config.node.install_dir
        for name, path in (("node.local_dir", config.node.local_dir), ("node.artifacts_dir", config.artifacts_root)):
            if is_under(path, home):
                refused.append(PolicyError(key_of(config, name), f"{path} lies under the install dir {home}, which "
                                           "every worker gets read-only: each could read the others' files; "
                                           "move it out"))
        src = _configured_source(home, key_of(config, "node.install_dir"), forbidden, refused)
        mounts.append(Mount(src, src, True, "install-dir"))
    mounts += [
        Mount(lay.supervisor_dir, lay.supervisor_dir, True, "supervisor"),
        Mount(lay.worker_root, lay.worker_root, False, "worker-root"),
        Mount(lay.artifacts, lay.artifacts, False, "artifacts"),
        Mount(lay.user_file, lay.user_file, False, "user-file"),
    ]
    if c.nscd_dir:
        src = _configured_source(c.nscd_dir, key_of(config, "container.nscd_dir"), forbidden, refused)
        mounts.append(Mount(src, src, False, "nscd"))
    mounts += [
        Mount(lay.shared_by_topology, lay.shared_by_topology, False, "shared-by-topology"),
        Mount(lay.worker_tmp, TMP_TARGET, False, "tmp"),
    ]
    for key, paths, ro in (("readonly_mounts", c.readonly_mounts, True),
                           ("readwrite_mounts", c.readwrite_mounts, False)):
        for i, path in enumerate(paths):
            src = _configured_source(path, f"{key_of(config, f'container.{key}')}[{i}]", forbidden, refused)
            mounts.append(Mount(src, src, ro, "configured-ro" if ro else "configured-rw"))
    seen: dict[str, Mount] = {}
    for m in mounts:
        if m.target in seen:
            # Only an operator-configured mount can collide (berth's own targets are distinct).
            name = {"configured-ro": "readonly_mounts", "configured-rw": "readwrite_mounts"}.get(m.role, "nscd_dir")
            raise ConfigError(key_of(config, f"container.{name}"),
                              f"mount target {m.target} is already used by the {seen[m.target].role} mount")
        seen[m.target] = m
    return tuple(mounts)


class Draft(NamedTuple):
    """A plan with berth's own hardening refusals listed instead of raised: what ``explain --storm``
    needs to show Storm's line for a request Storm would launch. Nothing launches a draft."""

    plan: Plan
    refusals: tuple[PolicyError, ...]


def build_plan(spec: WorkerSpec, config: NodeConfig, identity: Identity, host: HostFacts) -> Plan:
    """The plan, or the first error."""
    return _build(spec, config, identity, host, None).plan


def draft_plan(spec: WorkerSpec, config: NodeConfig, identity: Identity, host: HostFacts) -> Draft:
    """The plan, or the first error that is not one of berth's hardening refusals (the install
    dir over the node's state, a forbidden mount, memory over the node's maximum: Storm makes none
    of them), which are listed in the draft instead."""
    return _build(spec, config, identity, host, [])


def _build(spec: WorkerSpec, config: NodeConfig, identity: Identity, host: HostFacts,
           listed: list[PolicyError] | None) -> Draft:
    """``listed`` None: a refusal is raised where it is found (after the mounts: the first), as
    every other error is; else refusals are collected in it."""
    if identity.user != spec.user:
        raise PolicyError("user", f"identity is for {identity.user!r}, the request names {spec.user!r}")
    n = config.node
    check_identity(identity, n.min_uid, n.banned_users, allowed_users=n.allowed_users, allowed_groups=n.allowed_groups)
    image = choose_image(spec.image, config.images)
    refused: list[PolicyError] = []
    spec_in = spec
    spec = _storm_resources(spec, config)
    resources = _resources(spec, config, host, refused)
    limits.check_exec_size(spec.command, spec.env, host)
    script = render_script(spec.command, spec.env, config.container.umask)
    limits.check_script_size(script)
    lay = layout(config, spec.worker_id, spec.topology_id, spec.port)
    mounts = _mounts(config, lay, refused)
    if refused and listed is None:
        raise refused[0]
    seccomp = config.container.seccomp_profile or None
    if seccomp and not os.path.isfile(seccomp):
        raise ConfigError(key_of(config, "container.seccomp_profile"), f"{seccomp} is not a file on this node")
    security = Security(network=config.container.network, cgroup_parent=config.container.cgroup_parent,
                        seccomp_profile=seccomp)
    labels = (
        (LABEL_WORKER, spec.worker_id),
        (LABEL_TOPOLOGY, spec.topology_id),
        (LABEL_PORT, str(spec.port)),
        (LABEL_USER, spec.user),
        (LABEL_NODE, config.node.name),
        (LABEL_SPEC, spec_digest(spec_in)),
        (LABEL_OWNER, config.state_dir),
        (LABEL_MEMORY, str(resources.memory_mb)),
        (LABEL_CPU, str(resources.cpu_percent)),
        (LABEL_PIDS, str(resources.pids_limit)),
    )
    plan = Plan(
        worker_id=spec.worker_id,
        topology_id=spec.topology_id,
        port=spec.port,
        node=config.node.name,
        image=image,
        identity=identity,
        mounts=mounts,
        resources=resources,
        security=security,
        layout=lay,
        shell=config.container.shell,
        script=script,
        command=spec.command,
        env=tuple(spec.env.items()),
        labels=labels,
    )
    return Draft(plan, tuple(refused))


def _identity(spec: WorkerSpec, config: NodeConfig) -> Identity:
    n = config.node
    return resolve_identity(spec.user, n.min_uid, n.banned_users, allowed_users=n.allowed_users,
                            allowed_groups=n.allowed_groups)


def plan_for(spec: WorkerSpec, config: NodeConfig, host: HostFacts | None = None) -> Plan:
    """Resolve the user and the node's facts, then build the plan."""
    return build_plan(spec, config, _identity(spec, config), host or HostFacts.probe())


def draft_for(spec: WorkerSpec, config: NodeConfig, host: HostFacts | None = None) -> Draft:
    """Resolve the user and the node's facts, then draft the plan (``draft_plan``)."""
    return draft_plan(spec, config, _identity(spec, config), host or HostFacts.probe())
