"""What a storm.yaml means beyond berth's own tables: Storm's semantics, kept for that file only.

A berth.toml without a ``[storm]`` table keeps berth's behaviour. A storm.yaml (or the berth.toml
``berth config --from-storm`` prints for it) carries this section, which the plan follows:
the NUMA zones that pin a worker by its port, the supervisor's CPU override, whether Storm's
line limits memory, the margin Storm adds to each worker's memory beyond its capacity, and how
Storm's own string joins spell each path, so that ``explain --storm`` prints what Storm's code
builds while berth launches with normalised paths.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .._paths import is_under
from .trust import account_names

_strict = ConfigDict(extra="forbid", frozen=True, strict=True)
CGROUP_FS = "/sys/fs/cgroup"

BERTH_TO_STORM = {
    "node.name": "storm.local.hostname",
    "node.local_dir": "storm.local.dir",
    "node.log_dir": "storm.log.dir",
    "node.install_dir": "storm.home",
    "node.artifacts_dir": "storm.workers.artifacts.dir",
    "node.runtime": "storm.resource.isolation.plugin",
    "images.default": "storm.oci.image",
    "images.allowed": "storm.oci.allowed.images",
    "container.cgroup_root": "storm.oci.cgroup.root",
    "container.cgroup_parent": "storm.oci.cgroup.parent",
    "container.nscd_dir": "storm.oci.nscd.dir",
    "container.seccomp_profile": "storm.oci.seccomp.profile",
    "container.readonly_mounts": "storm.oci.readonly.bindmounts",
    "container.readwrite_mounts": "storm.oci.readwrite.bindmounts",
    "storm.memory_enforcement": "storm.cgroup.memory.enforcement.enable",
    "storm.worker_cpu_limit": "storm.worker.cgroup.cpu.limit",
    "storm.numa": "supervisor.numa.meta",
    "runc.images": "berth.runc.images",
    "runc.image_root": "berth.runc.image.root",
    "capacity.memory_mb": "supervisor.memory.capacity.mb",
    "capacity.cpu_percent": "supervisor.cpu.capacity",
    "storm.memory_margin_mb": "storm.supervisor.memory.limit.tolerance.margin.mb",
    "node.state_dir": "berth.state.dir",
    "api.socket": "berth.api.socket",
    "api.socket_group": "berth.api.socket.group",
    "api.socket_mode": "berth.api.socket.mode",
    "container.max_memory_mb": "berth.container.max.memory.mb",
    "storm.supervisor_user": "berth.storm.supervisor.user",
    "storm.launcher_group": "berth.storm.launcher.group",
    "node.min_uid": "berth.min.user.id",
    "node.banned_users": "berth.banned.users",
}
"""berth's key -> the storm.yaml key it comes from; errors name the key the operator wrote."""


def _plain(value: str) -> str:
    if "\0" in value or "\n" in value:
        raise ValueError("must not contain NUL or newline")
    return value


class NumaZone(BaseModel):
    """One entry of Storm's ``supervisor.numa.meta``: a worker on one of ``ports`` is pinned to
    ``cores`` (in the order given, as Storm passes them) and to memory node ``id``."""

    model_config = _strict

    id: str
    cores: tuple[int, ...]
    memory_mb: float = Field(ge=0)
    ports: tuple[int, ...]

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        # Storm passes the zone's key as --cpuset-mems; only a memory node number means anything there.
        if not re.fullmatch(r"0|[1-9]\d{0,3}", v):
            raise ValueError(f"zone {v!r} must be a memory node number like \"0\"")
        return v

    @field_validator("cores")
    @classmethod
    def _cores(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(c < 0 for c in v):
            raise ValueError("core numbers must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("Duplicate cores in NUMA config")  # Storm's own words
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 < p < 65536 for p in v):
            raise ValueError("ports must be 1-65535")
        return v


class StormSection(BaseModel):
    """Storm semantics for a node configured by a storm.yaml (``[storm]`` in berth.toml)."""

    model_config = _strict

    memory_enforcement: bool = False
    """``storm.cgroup.memory.enforcement.enable``: whether Storm's line carries ``--memory``.
    What berth launches is always limited (memory = swap limit)."""
    worker_cpu_limit: int | None = Field(default=None, ge=1)
    """``storm.worker.cgroup.cpu.limit``: replaces every worker's CPU percent, as in Storm."""
    numa: tuple[NumaZone, ...] = ()
    """``supervisor.numa.meta``, in the file's order (Storm takes the first zone listing a port)."""
    memory_margin_mb: int = Field(default=128, ge=0)
    """``storm.supervisor.memory.limit.tolerance.margin.mb``, rounded up as Storm's BasicContainer
    does: what Storm adds to each worker's memory beyond what Nimbus placed, left out of
    ``supervisor.memory.capacity.mb`` (DaemonConfig), so admission leaves it out of the sum too."""
    plugin: str = "org.apache.storm.container.docker.DockerManager"
    plugin_enabled: bool = True
    supervisor_user: str | None = None
    """The user Storm's supervisor runs as (``berth.storm.supervisor.user``): under ``berth serve
    --storm`` the only one, besides root, whose calls the Storm routes answer (the socket peer's
    uid, SO_PEERCRED), and the group owner of the worker dirs (below)."""
    launcher_group: str | None = None
    """Storm's launcher group (``storm.worker-launcher.group`` of worker-launcher.cfg): the group
    of a Storm-launched worker's dirs, so that the supervisor can read its heartbeats and delete
    them; default: the supervisor user's primary group. No worker's user may be in it."""

    # How Storm's string joins spell these paths (None: as berth's normalised value).
    local_dir: str | None = None
    artifacts_root: str | None = None
    cgroup_root: str | None = None
    cgroup_parent: str | None = None
    nscd_dir: str | None = None
    seccomp_profile: str | None = None
    readonly_mounts: tuple[str, ...] | None = None
    readwrite_mounts: tuple[str, ...] | None = None

    unused_keys: tuple[str, ...] = ()
    """Storm keys the storm.yaml set that berth accepts and does not use (``explain --format text``)."""
    notes: tuple[str, ...] = ()
    """What loading the storm.yaml found worth a warning (a likely mistake, a behaviour berth does not copy)."""

    @field_validator("supervisor_user", "launcher_group")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        return None if v is None else account_names((v,))[0]

    @field_validator("local_dir", "artifacts_root", "cgroup_root", "cgroup_parent", "nscd_dir", "seccomp_profile")
    @classmethod
    def _spelled(cls, v: str | None) -> str | None:
        return None if v is None else _plain(v)

    @field_validator("readonly_mounts", "readwrite_mounts")
    @classmethod
    def _spelled_list(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else tuple(_plain(p) for p in v)

    @model_validator(mode="after")
    def _ports_once(self) -> StormSection:
        seen: dict[int, str] = {}
        for zone in self.numa:
            for port in zone.ports:
                if port in seen and seen[port] != zone.id:
                    # Storm silently takes the first; a port in two zones is a mistake worth naming.
                    raise ValueError(f"port {port} is in NUMA zones {seen[port]} and {zone.id}")
                seen[port] = zone.id
        return self

    def zone_for(self, port: int) -> NumaZone | None:
        """Storm's ``SupervisorUtils.getNumaIdForPort``: the first zone whose ports hold ``port``."""
        return next((z for z in self.numa if port in z.ports), None)


def looks_like_cgroup_mount(path: str) -> bool:
    """A host path where cgroups are mounted, which belongs in the cgroup root, not the parent."""
    return is_under(os.path.normpath(path), CGROUP_FS) or os.path.exists(os.path.join(path, "cgroup.procs"))


def swap_hint(root: str, parent: str, root_key: str, parent_key: str) -> str:
    if not os.path.exists(root) and looks_like_cgroup_mount(parent):
        return (f" ({parent_key} is {parent}, which looks like a cgroup mount: did you swap {root_key} and "
                f"{parent_key}? Storm's Docker-support.md example has them swapped)")
    return ""
