"""Runtimes by name: the node config's ``node.runtime`` picks one, nobody else needs to know which.

A runtime is a package (``_runtimes/<name>/``, or any importable module elsewhere) whose
``PLUGIN`` is a ``RuntimePlugin``: its name, its declared capabilities, the model of its own
config table, what it keeps for itself on the host, its commands, and how to build it. The
built-in ones are listed here, one line each, and imported only when a config names them (a node
that runs Docker never imports the runc client); anyone else registers with ``register``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .._core.config import NodeConfig
from .._core.validation import raise_validation
from .._exceptions import ConfigError
from .base import Capabilities, Runtime

Factory = Callable[[NodeConfig], Runtime]


def _nothing(config: NodeConfig) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class RuntimePlugin:
    """Everything berth needs to know about a runtime before it builds one."""

    name: str
    make: Factory
    """Build the runtime for a node (imports its implementation: call it only when chosen)."""
    capabilities: Capabilities
    section: type[BaseModel] | None = None
    """The model of the runtime's own table (``[<name>]`` in berth.toml), if it has one."""
    check: Callable[[NodeConfig, BaseModel | None, Mapping[str, str]], None] | None = None
    """Load-time checks of a config that chooses this runtime (a ``ConfigError`` naming the key,
    as the operator wrote it: ``rename`` maps berth's keys to a storm.yaml's)."""
    reserved: Callable[[NodeConfig], tuple[str, ...]] = _nothing
    """Host paths the runtime keeps for itself (its state, the engine's socket): never mountable."""
    commands: str | None = None
    """``module:attr`` of a click group of its own (``berth <name> …``), imported by the CLI."""
    summary: Callable[[NodeConfig], str] | None = None
    """One line saying where workers run (the demo's header); default ``runtime <name>``."""
    stop_helpers: Callable[[NodeConfig], None] = lambda config: None
    """Stop what the runtime runs for the node beside berth, if it can (runc: berth-shim, which
    refuses while workers run): for a node being taken down."""

    def describe(self, config: NodeConfig) -> str:
        return self.summary(config) if self.summary is not None else f"runtime {self.name}"


_BUILTIN: dict[str, str] = {
    "docker": "berth._runtimes.docker",
    "runc": "berth._runtimes.runc",
    "process": "berth._runtimes.process",
}
_registered: dict[str, RuntimePlugin] = {}


def register(plugin: RuntimePlugin) -> None:
    """Add (or replace) a runtime: the fake in unit tests, a runtime of one's own."""
    _registered[plugin.name] = plugin


def names() -> list[str]:
    return sorted({*_BUILTIN, *_registered})


def plugin(name: str) -> RuntimePlugin:
    if name in _registered:
        return _registered[name]
    module = _BUILTIN.get(name)
    if module is None:
        raise ConfigError("node.runtime", f"unknown runtime {name!r} (known: {', '.join(names())})")
    found: RuntimePlugin = importlib.import_module(module).PLUGIN
    return found


def section(config: NodeConfig, name: str, rename: Mapping[str, str] | None = None) -> Any:
    """The runtime ``name``'s own table, parsed by its model (its defaults when the file has none)."""
    model = plugin(name).section
    if model is None:
        if config.runtime_tables.get(name):
            raise ConfigError(name, f"the {name} runtime takes no table of its own")
        return None
    try:
        return getattr(_wrapper(name, model).model_validate({name: config.runtime_tables.get(name, {})}), name)
    except ValidationError as exc:  # reported as ``<name>.<key>`` (or the key the operator wrote)
        raise raise_validation(exc, ConfigError, rename=rename) from None


@cache
def _wrapper(name: str, model: type[BaseModel]) -> type[BaseModel]:
    fields: dict[str, Any] = {name: (model, ...)}
    return create_model(f"Table_{name}", __config__=ConfigDict(extra="forbid"), **fields)


def check_config(config: NodeConfig, rename: Mapping[str, str] | None = None) -> NodeConfig:
    """The config, checked against the registry: ``node.runtime`` names a runtime, every runtime
    table parses with its runtime's model, the chosen one's own checks pass; with the paths it
    keeps for itself (``NodeConfig.runtime_reserved``) filled in."""
    rename = rename or {}
    try:
        chosen = plugin(config.node.runtime)
    except ConfigError as exc:
        raise ConfigError(rename.get("node.runtime", "node.runtime"), exc.reason) from exc
    for name in config.runtime_tables:
        if name not in names():
            raise ConfigError(name, f"unknown key: no table of berth's and no runtime of that name "
                              f"(runtimes: {', '.join(names())})")
        section(config, name, rename)
    if chosen.check is not None:
        chosen.check(config, section(config, chosen.name, rename), rename)
    reserved = tuple(dict.fromkeys(chosen.reserved(config)))
    return config if reserved == config.runtime_reserved else config.model_copy(update={"runtime_reserved": reserved})


def make_runtime(config: NodeConfig) -> Runtime:
    return plugin(config.node.runtime).make(config)
