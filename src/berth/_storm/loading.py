"""Which file a node config comes from and how it is read: berth's TOML or a Storm storm.yaml.

Here, in the Storm adapter's layer, because it is the one that knows both files; either way the
result is checked against the runtime registry (``node.runtime`` and the runtimes' own tables).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._core.config import NodeConfig, config_from_mapping, tuples
from .._core.docfile import read_text
from .._core.trust import check_root_owned, check_secrets
from .._exceptions import ConfigError
from .._runtimes.registry import check_config
from .yaml import load_storm_yaml


def load_config(path: str | os.PathLike[str] | None = None) -> NodeConfig:
    """Load the node config from ``path``, ``$BERTH_CONFIG``, or defaults when neither is set."""
    chosen = os.fspath(path) if path is not None else os.environ.get("BERTH_CONFIG")
    if not chosen:
        return check_config(NodeConfig())
    check_root_owned(chosen)
    p = Path(chosen)
    if p.suffix in (".yaml", ".yml"):
        return load_storm_yaml(p)
    text = read_text(p, "config", ConfigError)
    try:
        toml = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{chosen} is not valid TOML: {exc}") from exc
    config = checked_config(tuples(toml))
    check_secrets(chosen, tuple(k for k, v in (("api.token", config.api.token), ("api.tenants", config.api.tenants))
                                if v))
    return config


def checked_config(data: Mapping[str, Any]) -> NodeConfig:
    """A berth.toml's mapping as the node config, checked against the runtime registry."""
    return check_config(config_from_mapping(data))
