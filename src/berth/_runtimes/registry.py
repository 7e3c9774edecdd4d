"""Runtimes by name: the node config's ``node.runtime`` picks one, nobody else needs to know which.

Each entry is imported only when chosen, so a node that runs Docker never imports the runc
client (and the other way round).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .._core.config import NodeConfig
from .._exceptions import ConfigError
from .base import Runtime

Factory = Callable[[NodeConfig], Runtime]

_BUILTIN: dict[str, str] = {
    "docker": "berth._runtimes.docker:DockerRuntime",
    "runc": "berth._runtimes.runc:RuncRuntime",
    "process": "berth._runtimes.process:ProcessRuntime",
}
_registered: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Add a runtime under ``name`` (tests register the in-memory fake this way)."""
    _registered[name] = factory


def names() -> list[str]:
    return sorted({*_BUILTIN, *_registered})


def factory(name: str) -> Factory:
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name)
    if target is None:
        raise ConfigError("node.runtime", f"unknown runtime {name!r} (known: {', '.join(names())})")
    module, _, attr = target.partition(":")
    made: Factory = getattr(importlib.import_module(module), attr)
    return made


def make_runtime(config: NodeConfig) -> Runtime:
    return factory(config.node.runtime)(config)
