"""The node's maxima on what one request can make the node spend (memory, pids, exec size), and
its capacity: what all its workers together may hold.

Where the operator sets no maximum, the default is derived from the host (``HostFacts``), so
that no single request can take the host's memory or pids, or write a worker script the kernel
would refuse to run. A request above a maximum is a ``PolicyError`` naming its field; a node
default above a maximum is the operator's to fix, a ``ConfigError`` naming the config key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._exceptions import CapacityError, ConfigError, PolicyError
from .config import NodeConfig
from .hostfacts import HostFacts
from .stormconf import BERTH_TO_STORM

MAX_ARG_STRLEN = 131072
"""The kernel's bound on one argv or environment string, its NUL included (32 pages)."""
ARG_MAX_DEFAULT = 2 * 1024 * 1024
"""What one exec takes inside a container started with the engines' default 8 MiB stack limit
(a quarter of it): the bound when berth's own ``ARG_MAX`` is larger."""
EXEC_RESERVE = 16 * 1024
"""Kept for the variables the engine and the shell add (PATH, HOSTNAME, HOME, PWD, SHLVL…)."""
MAX_SCRIPT_BYTES = 4 * 1024 * 1024
"""The worker script's maximum. Quoting makes each ``'`` five bytes, so a command within
``ARG_MAX`` can still ask for a much larger script; past this the request is refused."""
POINTER = 8
"""The kernel counts a pointer per string against ``ARG_MAX`` as well."""

MEMORY_RESERVE_FRACTION = 10
MEMORY_RESERVE_MIN_MB = 1024
PIDS_FRACTION = 8
PIDS_CAP = 32768


def max_memory_mb(config: NodeConfig, host: HostFacts) -> int | None:
    """The most memory one worker may be given (``container.max_memory_mb``).

    Default: the host's RAM less a tenth of it, and less at least 1 GiB. A worker that reaches
    its limit is OOM-killed inside its own cgroup; a limit as large as the RAM would instead let
    one worker drive the whole node into the kernel's global OOM killer, which picks any process
    (the engine, berth, another tenant's worker). The reserve is what the kernel, the engine,
    berth and the page cache need to keep the node running while one worker sits at its limit.
    (What all workers together may use is the scheduler's business: it places them by capacity.)
    None when neither the config nor the host says.
    """
    if config.container.max_memory_mb is not None:
        return config.container.max_memory_mb
    return _ram_less_reserve(host)


def _ram_less_reserve(host: HostFacts) -> int | None:
    if host.memory_mb is None:
        return None
    reserve = max(host.memory_mb // MEMORY_RESERVE_FRACTION, MEMORY_RESERVE_MIN_MB)
    return max(host.memory_mb - reserve, 0)


def max_pids(config: NodeConfig, host: HostFacts) -> int:
    """The most processes and threads one worker may have (``container.max_pids_limit``).

    Default: an eighth of ``kernel.pid_max``, at most 32768. Every pid of the host comes from that
    one pool; a maximum as large as it would let two workers at their limits exhaust it, and then
    nothing on the node (sshd, the engine, berth) could fork.
    """
    if config.container.max_pids_limit is not None:
        return config.container.max_pids_limit
    if host.pid_max is None:
        return PIDS_CAP
    return max(1, min(PIDS_CAP, host.pid_max // PIDS_FRACTION))


def memory_for(requested: int | None, config: NodeConfig, host: HostFacts) -> int:
    c = config.container
    if c.max_memory_mb is not None and host.memory_mb is not None and c.max_memory_mb > host.memory_mb:
        raise ConfigError(key_of(config, "container.max_memory_mb"),
                          f"{c.max_memory_mb} MiB is more than this host's {host.memory_mb} MiB of RAM")
    limit = max_memory_mb(config, host)
    memory = requested if requested is not None else c.memory_mb
    if limit is not None and memory > limit:
        if requested is None:
            raise ConfigError("container.memory_mb", f"the node's default {memory} MiB is above the node's "
                              f"maximum of {limit} MiB per worker ({key_of(config, 'container.max_memory_mb')})")
        raise PolicyError("memory_mb", f"{memory} MiB is above the node's maximum of {limit} MiB per worker "
                          f"({key_of(config, 'container.max_memory_mb')})")
    return memory


def pids_for(requested: int | None, config: NodeConfig, host: HostFacts) -> int:
    c = config.container
    if c.max_pids_limit is not None and host.pid_max is not None and c.max_pids_limit >= host.pid_max:
        raise ConfigError("container.max_pids_limit",
                          f"{c.max_pids_limit} is not below this host's kernel.pid_max ({host.pid_max})")
    limit = max_pids(config, host)
    pids = requested if requested is not None else c.pids_limit
    if pids > limit:
        if requested is None:
            raise ConfigError("container.pids_limit", f"the node's default {pids} is above the node's maximum "
                              f"of {limit} per worker (container.max_pids_limit)")
        raise PolicyError("pids_limit", f"{pids} is above the node's maximum of {limit} per worker "
                          "(container.max_pids_limit)")
    return pids


def exec_limit(host: HostFacts) -> int:
    """The bytes of argv and environment (strings, their NULs and pointers) a worker may ask for."""
    return min(host.arg_max or ARG_MAX_DEFAULT, ARG_MAX_DEFAULT) - EXEC_RESERVE


def check_exec_size(command: Sequence[str], env: Mapping[str, str], host: HostFacts) -> None:
    """Refuse argv and env the kernel would refuse to exec (``E2BIG``, the worker's exit 126)."""
    limit = exec_limit(host)
    why = (f"above what exec takes on this node ({limit} bytes: ARG_MAX "
           f"{min(host.arg_max or ARG_MAX_DEFAULT, ARG_MAX_DEFAULT)} less {EXEC_RESERVE} kept for the "
           "variables the engine and the shell add)")
    argv = sum(len(a.encode()) + 1 + POINTER for a in command)
    if argv > limit:
        raise PolicyError("command", f"the command takes {argv} bytes, {why}")
    total = argv + sum(len(k.encode()) + len(v.encode()) + 2 + POINTER for k, v in env.items())
    if total > limit:
        raise PolicyError("env", f"the command and env take {total} bytes, {why}")


def check_script_size(script: str) -> None:
    size = len(script.encode())
    if size > MAX_SCRIPT_BYTES:
        raise PolicyError("command", f"the worker script would be {size} bytes, above {MAX_SCRIPT_BYTES} "
                          "(each ' in the command or env takes five bytes once quoted)")


# -- the node's capacity: what its workers together may take ---------------------------------------

CAPACITY_PIDS_SHARE = (3, 4)
"""Of the host's task pool (the smaller of ``pid_max`` and ``threads-max``): the rest is the node's."""
STORM_MEMORY_CAPACITY_MB = 4096
STORM_CPU_CAPACITY = 400
"""Storm's defaults (conf/defaults.yaml) for a storm.yaml that does not set its supervisor's capacity."""


@dataclass(frozen=True)
class Usage:
    """Memory, cpu and pids that workers hold (their limits, not what they use now), and how many."""

    memory_mb: int = 0
    cpu_percent: int = 0
    pids: int = 0
    workers: int = 0

    @classmethod
    def of(cls, memory_mb: int, cpu_percent: int, pids: int, margin: int = 0) -> Usage:
        """One worker, its memory counted without ``margin`` (Storm's, which its capacity leaves out)."""
        return cls(max(0, memory_mb - margin), cpu_percent, pids, 1)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.memory_mb + other.memory_mb, self.cpu_percent + other.cpu_percent,
                     self.pids + other.pids, self.workers + other.workers)


@dataclass(frozen=True)
class NodeCapacity:
    """What the node's workers together may take; None where neither the config nor the host says."""

    memory_mb: int | None
    cpu_percent: int
    pids: int | None
    memory_margin_mb: int = 0
    keys: tuple[str, str, str] = ("capacity.memory_mb", "capacity.cpu_percent", "capacity.pids")
    """The config keys the figures come from, for messages (a storm.yaml's own, where it set them)."""

    def fits(self, want: Usage, used: Usage) -> bool:
        try:
            check_admission(want, used, self)
        except (CapacityError, PolicyError):
            return False
        return True


def node_capacity(config: NodeConfig, host: HostFacts) -> NodeCapacity:
    """The node's capacity: the config's figures as given (limits are maxima: promising more than
    the machine has is an overcommit the operator may choose), else derived from the machine and
    below its figures (RAM less the reserve ``max_memory_mb`` keeps, 100 per online cpu, three
    quarters of the task pool), for a storm.yaml no more than Storm's defaults."""
    c = config.configured_capacity
    keys = tuple(_capacity_key(config, k) for k in ("memory_mb", "cpu_percent", "pids"))
    pool = min((x for x in (host.pid_max, host.threads_max) if x is not None), default=None)
    memory, cpu, pids = c.memory_mb, c.cpu_percent, c.pids
    storm = config.storm is not None
    if memory is None:
        memory = _ram_less_reserve(host)
        memory = min(memory, STORM_MEMORY_CAPACITY_MB) if storm and memory is not None else memory
    if cpu is None:
        cpu = host.cpu_count * 100
        cpu = min(cpu, STORM_CPU_CAPACITY) if storm else cpu
    if pids is None and pool is not None:
        pids = pool * CAPACITY_PIDS_SHARE[0] // CAPACITY_PIDS_SHARE[1]
    margin = config.storm.memory_margin_mb if config.storm is not None else 0
    return NodeCapacity(memory, cpu, pids, margin, keys)  # type: ignore[arg-type]


def _capacity_key(config: NodeConfig, key: str) -> str:
    if getattr(config.capacity, key) is None and key != "pids" and getattr(config.cluster, key) is not None:
        return f"cluster.{key}"
    return key_of(config, f"capacity.{key}")


def key_of(config: NodeConfig, name: str) -> str:
    """The key the operator wrote: the storm.yaml's for a node configured by one."""
    return BERTH_TO_STORM.get(name, name) if config.storm is not None else name


def check_admission(want: Usage, used: Usage, cap: NodeCapacity) -> None:
    """Refuse ``want`` (one worker) on top of ``used``: ``PolicyError`` when it alone is past the
    capacity (it can never run here), ``CapacityError`` when it is past what is left (it may fit
    once others end). Each names the request's field and the capacity's key."""
    margin = (f" (each worker counted without Storm's {cap.memory_margin_mb} MiB tolerance margin, "
              "storm.supervisor.memory.limit.tolerance.margin.mb)") if cap.memory_margin_mb else ""
    for field, limit, key, w, u, unit, tail in (
            ("memory_mb", cap.memory_mb, cap.keys[0], want.memory_mb, used.memory_mb, " MiB", margin),
            ("cpu_percent", cap.cpu_percent, cap.keys[1], want.cpu_percent, used.cpu_percent, "%", ""),
            ("pids_limit", cap.pids, cap.keys[2], want.pids, used.pids, "", "")):
        if limit is None:
            continue
        what = f"the node's capacity of {limit}{unit or ' pids'} ({key})"
        if w > limit:
            raise PolicyError(field, f"{w}{unit} is above {what}: it can never run here{tail}")
        if u + w > limit:
            raise CapacityError(field, f"{w}{unit} more would exceed {what}: its {used.workers} worker(s) hold "
                                       f"{u}{unit}{tail}")


def capacity_lines(cap: NodeCapacity, used: Usage | None, want: Usage | None, why_unknown: str = "") -> list[str]:
    """``explain --format text``: the node's capacity, what its workers hold, and whether one more fits."""
    def fig(v: int | None, unit: str) -> str:
        return "unbounded (unknown on this host)" if v is None else f"{v}{unit}"

    lines = [f"capacity  memory {fig(cap.memory_mb, ' MiB')}, cpu {fig(cap.cpu_percent, '%')}, "
             f"pids {fig(cap.pids, '')}" + (f" (memory counted without Storm's {cap.memory_margin_mb} MiB margin)"
                                            if cap.memory_margin_mb else "")]
    if used is None:
        lines.append(f"admitted  unknown: {why_unknown}")
        return lines
    lines.append(f"admitted  {used.workers} worker(s): memory {used.memory_mb} MiB, cpu {used.cpu_percent}%, "
                 f"pids {used.pids}")
    if want is not None:
        try:
            check_admission(want, used, cap)
            lines.append("this one  fits")
        except (CapacityError, PolicyError) as exc:
            lines.append(f"this one  does not fit: {exc}")
    return lines
