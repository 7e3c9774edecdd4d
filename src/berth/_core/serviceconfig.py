"""The supervisor's and the API's parts of the node config that need none of its path rules:
restart policy, tenant tokens, the listen-address check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_strict = ConfigDict(extra="forbid", frozen=True, strict=True)


class SupervisorSection(BaseModel):
    """How the supervisor keeps assigned workers running."""

    model_config = _strict

    grace_s: float = Field(default=10.0, ge=0)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    crashloop_after: int = Field(default=5, ge=1)
    """Consecutive failed runs after which a worker is marked crash-looping (restarts at the cap)."""
    healthy_after_s: float = Field(default=30.0, ge=0)
    """A run this long that ends with exit code 0 does not count as a failure."""
    resync_s: float = Field(default=10.0, gt=0)
    """The longest the supervisor goes without comparing what runs with what is assigned."""
    parallel: int = Field(default=8, ge=1, le=64)
    """Launches in flight at once."""
    parallel_stops: int = Field(default=16, ge=1, le=256)
    """Stops in flight at once, apart from launches: a stop that waits out its grace period never
    holds up a launch, and draining N workers that ignore SIGTERM takes ceil(N / this) graces."""
    stale_after_s: float = Field(default=60.0, gt=0)
    """``/healthz`` says degraded when no reconcile pass has completed for this long."""
    stalled_after_s: float = Field(default=30.0, ge=0)
    """A worker whose PID 1 stays stopped (ptrace, from inside the worker) this long is killed and
    started again, as a failure: stopped, it can neither end by itself nor be told to stop."""
    max_workers: int = Field(default=256, ge=1, le=4096)
    """The most workers this node runs at once, whoever assigns them (a file, the API, the
    cluster agent): each costs a container, processes, memory and the supervisor's time. Entries
    past it are rejected, workers already assigned keeping their places."""


class TenantToken(BaseModel):
    """A bearer token bound to a tenant: it may only see, launch, kill and replace workers that
    run as one of ``users`` in a topology matching one of ``topologies`` (shell patterns)."""

    model_config = _strict

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    token: str = Field(min_length=16)
    users: tuple[str, ...] = Field(min_length=1)
    topologies: tuple[str, ...] = ("*",)

    def allows(self, user: str, topology_id: str) -> bool:
        return user in self.users and self.allows_topology(topology_id)

    def allows_topology(self, topology_id: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(topology_id, p) for p in self.topologies)


def check_listen_address(v: str) -> str:
    """``host:port`` or ``:port`` with a port in 1-65535 (raises ValueError naming the value)."""
    _host, _, port = v.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port or :port with a port in 1-65535, got {v!r}")
    return v
