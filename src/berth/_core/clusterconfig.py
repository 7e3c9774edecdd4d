"""The ``[cluster]`` section of the node config: where ZooKeeper is, who the node is there, what it offers."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_strict = ConfigDict(extra="forbid", frozen=True, strict=True)


class NumaZone(BaseModel):
    """A NUMA zone the scheduler may pin workers to: its cpus and the memory it offers. The same
    model checks the node's config and what a node publishes in ZooKeeper (bounded: a node cannot
    claim a million cores to attract every worker)."""

    model_config = _strict

    id: int = Field(ge=0, le=1023)
    cores: tuple[int, ...] = Field(min_length=1, max_length=4096)
    memory_mb: int = Field(ge=1, le=1 << 30)

    @property
    def cpu_percent(self) -> int:
        return 100 * len(self.cores)


class ClusterSection(BaseModel):
    """Cluster mode (``berth agent``): where ZooKeeper is, who this node is there, what it offers."""

    model_config = _strict

    zk: str | None = None
    """``host:port,host:port,…`` of the ensemble (or ``--zk`` / ``$BERTH_ZK``)."""
    root: str = "/berth"
    """The znode under which berth keeps everything (several clusters can share an ensemble)."""
    auth_file: str | None = None
    """A file holding this identity's ``user:password`` for ZooKeeper digest auth, mode 0600."""
    session_timeout_s: float = Field(default=10.0, ge=1.0, le=60.0)
    reconnect_max_delay_s: float = Field(default=2.0, gt=0, le=30.0)
    """The longest wait between two connection attempts (kazoo's own default grows to an hour)."""
    fence_after_s: float | None = Field(default=None, gt=0)
    """Stop every worker after this long without ZooKeeper, and never later than the coordinator's
    dead_after (its documents say it) less grace_s (off: availability first, as Storm)."""
    state_interval_s: float = Field(default=1.0, ge=0.05, le=60.0)
    """The shortest time between two writes of this node's state: requests stay sparse."""
    ports: tuple[int, ...] = (6700, 6701, 6702, 6703)
    """The slots this node offers (Storm's supervisor.slots.ports)."""
    cpu_percent: int | None = Field(default=None, ge=1)
    """CPU the node offers, 100 per core: ``capacity.cpu_percent`` by another name (one figure)."""
    memory_mb: int | None = Field(default=None, ge=1)
    """Memory the node offers: ``capacity.memory_mb`` by another name (default: the node's capacity)."""
    numa_zones: tuple[NumaZone, ...] = ()
    node_max_cpu_percent: int = Field(default=100 * 256, ge=1, le=100 * 4096)
    node_max_memory_mb: int = Field(default=4 << 20, ge=1, le=1 << 30)
    node_max_ports: int = Field(default=256, ge=1, le=1024)
    """The coordinator's own limits on what one node may claim to offer (``berth schedule``): a
    node's registration is its own word, so a node claiming thousands of cores cannot draw every
    worker of the cluster to itself; what it claims past these is not placed on."""

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", v) or any(p in (".", "..") for p in v.split("/")):
            raise ValueError(f"must be a znode path like /berth, got {v!r}")
        return v

    @field_validator("auth_file")
    @classmethod
    def _auth(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v or "\n" in v):
            raise ValueError(f"must be an absolute path, got {v!r}")
        return v

    @field_validator("zk")
    @classmethod
    def _zk(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]+(,[A-Za-z0-9.:\[\]_-]+)*", v):
            raise ValueError(f"must be host:port[,host:port…] (the root znode is cluster.root), got {v!r}")
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(v) > 1024:
            raise ValueError("must list 1 to 1024 ports")
        if any(not 1 <= p <= 65535 for p in v) or len(set(v)) != len(v):
            raise ValueError("must be distinct ports between 1 and 65535")
        return v

    @model_validator(mode="after")
    def _zones(self) -> ClusterSection:
        ids = [z.id for z in self.numa_zones]
        if len(set(ids)) != len(ids):
            raise ValueError("numa_zones: a zone id is listed twice")
        seen: set[int] = set()
        for z in self.numa_zones:
            if seen & set(z.cores):
                raise ValueError(f"numa_zones: zone {z.id} shares cores with another zone")
            seen |= set(z.cores)
        return self
