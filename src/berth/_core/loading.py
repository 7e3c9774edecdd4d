"""Which file a node config comes from and how it is read: berth's TOML or a Storm storm.yaml.

Apart from ``config`` (the model) so that the model need not import ``storm`` (Storm's mapping,
which builds on the model).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from .._exceptions import ConfigError
from .config import NodeConfig, config_from_mapping, tuples
from .docfile import read_text
from .storm import load_storm_yaml
from .trust import check_root_owned, check_secrets


def load_config(path: str | os.PathLike[str] | None = None) -> NodeConfig:
    """Load the node config from ``path``, ``$BERTH_CONFIG``, or defaults when neither is set."""
    chosen = os.fspath(path) if path is not None else os.environ.get("BERTH_CONFIG")
    if not chosen:
        return NodeConfig()
    check_root_owned(chosen)
    p = Path(chosen)
    if p.suffix in (".yaml", ".yml"):
        return load_storm_yaml(p)
    text = read_text(p, "config", ConfigError)
    try:
        toml = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{chosen} is not valid TOML: {exc}") from exc
    config = config_from_mapping(tuples(toml))
    check_secrets(chosen, tuple(k for k, v in (("api.token", config.api.token), ("api.tenants", config.api.tenants))
                                if v))
    return config
