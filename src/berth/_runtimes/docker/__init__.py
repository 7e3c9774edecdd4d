"""The docker runtime: workers as containers of a Docker engine, through the Engine API.

Owns its renderer (``render``: the Engine API create body, and ``docker run`` as a line for people),
the decoding of what the engine reports (``inspect``) and the runtime itself (``runtime``, imported
only when a config chooses docker). Its one key is ``node.docker_host`` (the engine's address).
"""

from __future__ import annotations

import os

from ..._core.config import NodeConfig
from ..base import Capabilities, Runtime
from ..registry import RuntimePlugin

DEFAULT_SOCKET = "/var/run/docker.sock"
CAPABILITIES = Capabilities(isolated=True, exact_status=False, survives_restart=True, oom_reported=True,
                            host_dirs=True, cidfile=True, starters=("runc:[",))


def engine_socket(config: NodeConfig) -> str | None:
    """The engine's unix socket (never a worker's mount), None for a TCP or SSH engine."""
    host = config.node.docker_host or os.environ.get("DOCKER_HOST")
    if host is None:
        return DEFAULT_SOCKET
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def _make(config: NodeConfig) -> Runtime:
    from .runtime import DockerRuntime

    return DockerRuntime(config)


PLUGIN = RuntimePlugin(
    name="docker", make=_make, capabilities=CAPABILITIES,
    reserved=lambda config: tuple(p for p in (engine_socket(config),) if p),
    summary=lambda config: f"engine {config.node.docker_host or 'default'}")
