"""The node's maxima on what one request can make the node spend: memory, pids, exec size.

Where the operator sets no maximum, the default is derived from the host (``HostFacts``), so
that no single request can take the host's memory or pids, or write a worker script the kernel
would refuse to run. A request above a maximum is a ``PolicyError`` naming its field; a node
default above a maximum is the operator's to fix, a ``ConfigError`` naming the config key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._exceptions import ConfigError, PolicyError
from .config import NodeConfig
from .hostfacts import HostFacts

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
        raise ConfigError("container.max_memory_mb",
                          f"{c.max_memory_mb} MiB is more than this host's {host.memory_mb} MiB of RAM")
    limit = max_memory_mb(config, host)
    memory = requested if requested is not None else c.memory_mb
    if limit is not None and memory > limit:
        if requested is None:
            raise ConfigError("container.memory_mb", f"the node's default {memory} MiB is above the node's "
                              f"maximum of {limit} MiB per worker (container.max_memory_mb)")
        raise PolicyError("memory_mb", f"{memory} MiB is above the node's maximum of {limit} MiB per worker "
                          "(container.max_memory_mb)")
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
