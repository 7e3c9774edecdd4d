"""The node configuration: what the operator decides, and so what no request can override.

Loaded from ``berth.toml`` or from a Storm ``storm.yaml``; validated once, at load, so that a
typo in a key or a relative path is reported by name instead of surfacing later as an odd
container. A runtime's own table (``[runc]``, …) is kept here as plain data: the runtime's model
parses it, and the runtime registry checks every such table, and ``node.runtime``, at load
(``_runtimes.registry.check_config``); this layer knows no runtime by name.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._exceptions import ConfigError
from .._paths import is_under
from .clusterconfig import ClusterSection
from .fields import absolute, program, valid_image
from .serviceconfig import CapacitySection, SupervisorSection, TenantToken, check_listen_address
from .stormconf import StormSection
from .trust import account_names, state_apart
from .validation import raise_validation

DEFAULT_FORBIDDEN = ("/proc", "/sys", "/dev", "/root", "/boot", "/etc/shadow", "/etc/sudoers",
                     "/var/run/docker.sock", "/run/containerd")
DEFAULT_STATE_DIR = "/var/lib/berth/state"  # never where workers write (default local_dir: /var/lib/berth/local)

_strict = ConfigDict(extra="forbid", frozen=True, strict=True)


def _octal(value: str, what: str) -> str:
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f"must be an octal {what}, got {value!r}")
    return value


class NodeSection(BaseModel):
    model_config = _strict

    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    local_dir: str = "/var/lib/berth/local"
    log_dir: str = "/var/log/berth"
    install_dir: str | None = None
    artifacts_dir: str | None = None
    """Where workers' artifacts go (Storm's ``storm.workers.artifacts.dir``); ``<log_dir>/workers-artifacts``."""
    state_dir: str | None = None
    runtime: str = "docker"
    """A runtime's name in the registry (``_runtimes.registry``), checked there at load."""
    docker_host: str | None = None
    min_uid: int = Field(default=1000, ge=1)
    banned_users: tuple[str, ...] = ("bin", "nobody")
    """``nobody`` (uid 65534, above any min_uid) owns what NFS squashes and what daemons drop to."""
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    """When either list is set, only the users named, and the members of the groups named (any of
    a user's groups counts), may run workers; banned_users still wins."""

    @field_validator("banned_users", "allowed_users", "allowed_groups")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return account_names(v)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", v):
            raise ValueError(f"must be a runtime's name such as 'docker' or 'runc', got {v!r}")
        return v

    @field_validator("local_dir", "log_dir", "install_dir", "artifacts_dir", "state_dir")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return None if v is None else absolute(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-', got {v!r}")
        return v

    @model_validator(mode="after")
    def _state_apart(self) -> NodeSection:
        arts = self.artifacts_dir or os.path.join(self.log_dir, "workers-artifacts")
        state_apart(self.state_dir or DEFAULT_STATE_DIR,
                    {"local_dir": self.local_dir, "log_dir": self.log_dir, "artifacts_dir": arts})
        return self

    @field_validator("docker_host")
    @classmethod
    def _docker_host(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(unix|tcp|ssh|npipe)://", v):
            raise ValueError(f"must be a unix://, tcp:// or ssh:// address, got {v!r}")
        return v


class ImagesSection(BaseModel):
    model_config = _strict

    default: str | None = None
    allowed: tuple[str, ...] = ()

    @field_validator("default")
    @classmethod
    def _default(cls, v: str | None) -> str | None:
        if v is not None and not valid_image(v):
            raise ValueError(f"{v!r} is not a valid image reference")
        return v

    @field_validator("allowed")
    @classmethod
    def _allowed(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name != "*" and not valid_image(name):
                raise ValueError(f"{name!r} is not a valid image reference (or '*')")
        return v


class ContainerSection(BaseModel):
    model_config = _strict

    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = "/berth"
    mount_cgroup_root: bool = True
    nscd_dir: str = ""
    seccomp_profile: str = ""
    readonly_mounts: tuple[str, ...] = ()
    readwrite_mounts: tuple[str, ...] = ()
    network: str = "host"
    umask: str = "0027"
    shell: str = "bash"
    cpu_percent: int = Field(default=100, ge=1)
    memory_mb: int = Field(default=1024, ge=6)
    max_memory_mb: int | None = Field(default=None, ge=6)  # per worker; default: _core.limits.max_memory_mb
    pids_limit: int = Field(default=1024, ge=1)
    max_pids_limit: int | None = Field(default=None, ge=1)  # per worker; default: _core.limits.max_pids
    log_max_size_mb: int = Field(default=20, ge=1, le=10240)
    log_max_files: int = Field(default=5, ge=1, le=100)  # a worker's output: files of log_max_size_mb
    forbidden_mounts: tuple[str, ...] = DEFAULT_FORBIDDEN

    @field_validator("cgroup_root")
    @classmethod
    def _root(cls, v: str) -> str:
        return absolute(v)

    @field_validator("nscd_dir", "seccomp_profile")
    @classmethod
    def _optional_path(cls, v: str) -> str:
        if v == "unconfined":
            raise ValueError("'unconfined' is not allowed; leave empty for the engine's default profile")
        return absolute(v) if v else v

    @field_validator("readonly_mounts", "readwrite_mounts", "forbidden_mounts")
    @classmethod
    def _path_list(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(absolute(p) for p in v)

    @field_validator("cgroup_parent")
    @classmethod
    def _parent(cls, v: str) -> str:
        # Storm adds the leading '/' to a relative parent; so do we.
        v = v if v.startswith("/") else "/" + v
        if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", v) or "/../" in v + "/" or "/./" in v + "/":
            raise ValueError(f"must be a cgroup path like /berth, got {v!r}")
        return v

    @field_validator("network")
    @classmethod
    def _network(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"must be a network name such as 'host' or 'none', got {v!r}")
        return v

    @field_validator("umask")
    @classmethod
    def _umask(cls, v: str) -> str:
        return _octal(v, "mask like 0027")

    @field_validator("shell")
    @classmethod
    def _shell(cls, v: str) -> str:
        return program(v)

    @model_validator(mode="after")
    def _maxima(self) -> ContainerSection:
        if self.max_pids_limit is not None and self.pids_limit > self.max_pids_limit:
            raise ValueError(f"pids_limit {self.pids_limit} is above max_pids_limit {self.max_pids_limit}")
        if self.max_memory_mb is not None and self.memory_mb > self.max_memory_mb:
            raise ValueError(f"memory_mb {self.memory_mb} is above max_memory_mb {self.max_memory_mb}")
        return self


class ApiSection(BaseModel):
    """The HTTP API: a unix socket by default; TCP only with a bearer token. ``token`` is the
    operator's (everything); each of ``tenants`` is bound to its users and topologies."""

    model_config = _strict

    socket: str | None = None
    socket_mode: str = "0660"
    socket_group: str | None = None
    tcp: str | None = None
    """``host:port``; loopback unless an address is given explicitly."""
    token: str | None = Field(default=None, min_length=16)
    tenants: tuple[TenantToken, ...] = ()

    @field_validator("socket")
    @classmethod
    def _socket(cls, v: str | None) -> str | None:
        return None if v is None else absolute(v)

    @field_validator("socket_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        return _octal(v, "mode like 0660")

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, v: str | None) -> str | None:
        return None if v is None else check_listen_address(v)

    @model_validator(mode="after")
    def _token(self) -> ApiSection:
        if self.tcp and not self.token:
            raise ValueError("tcp needs a token (api.token, at least 16 characters)")
        tokens = [t.token for t in self.tenants] + ([self.token] if self.token else [])
        if len(set(tokens)) != len(tokens):
            raise ValueError("every token (api.token and each api.tenants token) must be different")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be different")
        return self


class NodeConfig(BaseModel):
    """The whole node configuration; immutable once loaded."""

    model_config = _strict

    node: NodeSection = Field(default_factory=NodeSection)
    images: ImagesSection = Field(default_factory=ImagesSection)
    container: ContainerSection = Field(default_factory=ContainerSection)
    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    api: ApiSection = Field(default_factory=ApiSection)
    storm: StormSection | None = None
    """Storm's semantics, for a node configured by a storm.yaml (see ``stormconf``)."""
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    capacity: CapacitySection = Field(default_factory=CapacitySection)
    runtime_tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each runtime's own table (``[runc]`` in berth.toml) as the file gave it; its runtime's model
    parses it (``_runtimes.<name>.config``). Plain data here, so this layer needs no runtime."""
    runtime_reserved: tuple[str, ...] = ()
    """Paths the chosen runtime keeps for itself (its state root, the engine's socket): never a
    worker's mount. Filled by ``_runtimes.registry.check_config``, not written in a file."""

    @property
    def configured_capacity(self) -> CapacitySection:
        """The configured capacity, ``cluster.memory_mb``/``cpu_percent`` standing in for unset keys."""
        c = self.capacity
        return c.model_copy(update={"memory_mb": c.memory_mb if c.memory_mb is not None else self.cluster.memory_mb,
                                    "cpu_percent": c.cpu_percent if c.cpu_percent is not None
                                    else self.cluster.cpu_percent})

    @model_validator(mode="after")
    def _layout(self) -> NodeConfig:
        home = self.node.install_dir
        if home and self.storm is None:  # a storm.yaml's defaults do this: the plan refuses it instead
            for key in ("local_dir", "log_dir"):
                path = getattr(self.node, key)
                if is_under(path, home):
                    # The install dir is mounted read-only into every worker, so worker state
                    # under it would be readable by all of them. (Storm allows it.)
                    raise ValueError(f"node.{key} must not be under node.install_dir ({home})")
        return self

    @property
    def artifacts_root(self) -> str:
        return self.node.artifacts_dir or os.path.join(self.node.log_dir, "workers-artifacts")

    @property
    def state_dir(self) -> str:
        return self.node.state_dir or DEFAULT_STATE_DIR

    def with_runtime_table(self, name: str, **values: Any) -> NodeConfig:
        """A copy whose runtime table ``name`` has ``values`` set (callers that adjust a loaded config)."""
        tables = {**self.runtime_tables, name: {**self.runtime_tables.get(name, {}), **values}}
        return self.model_copy(update={"runtime_tables": tables})

    def runtime_dir(self, name: str) -> str:
        """A runtime's own state (runc's: workers' bundles, exit files, the shim's socket and lock)."""
        return os.path.join(self.state_dir, name)

    @property
    def api_socket(self) -> str:
        return self.api.socket or os.path.join(self.state_dir, "api.sock")

    @property
    def forbidden_mounts(self) -> tuple[str, ...]:
        """The configured list plus what can never be mounted: berth's own state and the runtime's."""
        extra = [self.node.local_dir, self.artifacts_root, self.state_dir, *self.runtime_reserved]
        out: list[str] = []
        for p in (*self.container.forbidden_mounts, *extra):
            if p not in out:
                out.append(p)
        return tuple(out)


def _tables(data: Mapping[str, Any]) -> dict[str, Any]:
    """The file's own tables as the model's fields; any other table is a runtime's, kept as data
    (whether a runtime of that name exists is the registry's question)."""
    mine = {k: v for k, v in data.items() if k in NodeConfig.model_fields and k not in _DERIVED}
    tables = {k: v for k, v in data.items() if k not in NodeConfig.model_fields}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(str(name), "unknown key (a runtime's table, or a table of berth's)")
    merged = {**mine.get("runtime_tables", {}), **{str(k): dict(v) for k, v in tables.items()}}
    return {**mine, "runtime_tables": merged} if merged else mine


_DERIVED = frozenset({"runtime_reserved"})


def config_from_mapping(data: Mapping[str, Any], source: str = "config",
                        rename: Mapping[str, str] | None = None) -> NodeConfig:
    """The node config a file's mapping gives; the runtimes' tables are checked by the registry."""
    try:
        config = NodeConfig.model_validate(_tables(data))
    except ValidationError as exc:
        raise raise_validation(exc, ConfigError, rename=rename) from None
    for key in ("memory_mb", "cpu_percent"):
        mine, offered = getattr(config.capacity, key), getattr(config.cluster, key)
        if mine is not None and offered is not None and mine != offered:
            raise ConfigError("capacity", f"capacity.{key} ({mine}) and cluster.{key} ({offered}) are one figure (what "
                              f"the node's workers may take is what it offers the cluster): set capacity.{key} alone")
    return config


def tuples(data: Any) -> Any:
    """Every list in a parsed document as a tuple (the models are frozen)."""
    if isinstance(data, dict):
        return {k: tuples(v) for k, v in data.items()}
    if isinstance(data, list):
        return tuple(tuples(v) for v in data)
    return data
