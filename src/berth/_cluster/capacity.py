"""What a node offers the cluster (cpu, memory, ports, NUMA zones), and the node's own check of it.

The coordinator places workers by the capacity a node registers; the agent checks every document
against the same numbers, so a wrong or hostile document cannot make a node take on more than it
offers: the entries past its capacity are rejected, with the reason, and the others apply.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._core.clusterconfig import ClusterSection, NumaZone
from .._core.config import ContainerSection, NodeConfig
from .._core.hostfacts import HostFacts
from .._core.limits import node_capacity as admission_capacity
from .._exceptions import ClusterError
from .._service.assignments import Assignments, Rejection

UNKNOWN_RAM_OFFER_MB = 1024
"""Offered where the machine's RAM cannot be read (and the config does not say): a small machine's."""
MODEL = ConfigDict(extra="forbid", frozen=True, strict=True)


class Capacity(BaseModel):
    """What a node offers. Bounded: a node cannot claim a million ports to attract every worker."""

    model_config = MODEL
    cpu_percent: int = Field(ge=1, le=100 * 4096)
    memory_mb: int = Field(ge=1, le=1 << 30)
    ports: tuple[int, ...] = Field(min_length=1, max_length=1024)
    zones: tuple[NumaZone, ...] = Field(default=(), max_length=64)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= p <= 65535 for p in v) or len(set(v)) != len(v):
            raise ValueError("must be distinct ports between 1 and 65535")
        return v


def node_capacity(config: NodeConfig, facts: HostFacts | None = None) -> Capacity:
    """The node's offer: the same figures its own admission holds its workers to (``[capacity]``,
    or ``cluster.memory_mb``/``cpu_percent``, else derived from the machine): a node never offers
    the cluster what it would refuse to run."""
    c = config.cluster
    facts = facts or HostFacts.probe()
    own = admission_capacity(config, facts)
    cpu = max(1, own.cpu_percent)
    mem = own.memory_mb if own.memory_mb is not None else UNKNOWN_RAM_OFFER_MB
    zones = tuple(c.numa_zones)
    for z in zones:
        missing = sorted(set(z.cores) - facts.cpus)
        if missing:
            raise ClusterError("cluster.numa_zones", f"zone {z.id} names cpus {missing} this machine does not have")
    return Capacity(cpu_percent=cpu, memory_mb=mem, ports=c.ports, zones=zones)


def capped(claim: Capacity, settings: ClusterSection) -> Capacity:
    """A node's declared capacity within the coordinator's per-node maxima (``cluster.node_max_*``):
    its cpu and memory at most those, its first ports only."""
    return claim.model_copy(update={"cpu_percent": min(claim.cpu_percent, settings.node_max_cpu_percent),
                                    "memory_mb": min(claim.memory_mb, settings.node_max_memory_mb),
                                    "ports": claim.ports[:settings.node_max_ports]})


def check_capacity(parsed: Assignments, capacity: Capacity, defaults: ContainerSection, source: str) -> list[Rejection]:
    """Reject (in document order) the entries past the node's ports, memory or cpu."""
    out: list[Rejection] = []
    mem = cpu = 0
    for wid, spec in list(parsed.specs.items()):
        m = spec.memory_mb if spec.memory_mb is not None else defaults.memory_mb
        p = spec.cpu_percent if spec.cpu_percent is not None else defaults.cpu_percent
        field, reason = None, None
        if spec.port not in capacity.ports:
            field, reason = "port", f"port {spec.port} is not one of this node's ports"
        elif mem + m > capacity.memory_mb:
            field, reason = "memory_mb", (f"{m} MiB more would exceed the node's {capacity.memory_mb} MiB "
                                          f"({mem} MiB assigned before it)")
        elif cpu + p > capacity.cpu_percent:
            field, reason = "cpu_percent", (f"{p}% more would exceed the node's {capacity.cpu_percent}% "
                                            f"({cpu}% assigned before it)")
        if reason is not None:
            del parsed.specs[wid]
            out.append(Rejection(source, None, wid, field, reason))
            parsed.rejected.append(out[-1])
            continue
        mem, cpu = mem + m, cpu + p
    return out
