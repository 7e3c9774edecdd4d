"""A Storm ``storm.yaml`` as a berth node config: Storm's keys mapped onto berth's tables.

Kept apart from berth's own TOML so that Storm's defaults and semantics apply only to a
storm.yaml, and berth's own config keeps berth's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigError
from .config import NodeConfig, config_from_mapping, tupled

# Storm key -> (table, key). Only these storm.* keys are read; the rest of a storm.yaml is the
# cluster's business and is ignored, except unknown storm.oci.* keys, which are typos.
STORM_KEYS: dict[str, tuple[str, str]] = {
    "storm.local.dir": ("node", "local_dir"),
    "storm.log.dir": ("node", "log_dir"),
    "storm.home": ("node", "install_dir"),
    "storm.oci.image": ("images", "default"),
    "storm.oci.allowed.images": ("images", "allowed"),
    "storm.oci.cgroup.root": ("container", "cgroup_root"),
    "storm.oci.cgroup.parent": ("container", "cgroup_parent"),
    "storm.oci.nscd.dir": ("container", "nscd_dir"),
    "storm.oci.seccomp.profile": ("container", "seccomp_profile"),
    "storm.oci.readonly.bindmounts": ("container", "readonly_mounts"),
    "storm.oci.readwrite.bindmounts": ("container", "readwrite_mounts"),
}


def config_from_storm(data: Mapping[str, Any]) -> NodeConfig:
    tables: dict[str, dict[str, Any]] = {"node": {}, "images": {}, "container": {}}
    for key, value in data.items():
        if key in STORM_KEYS:
            table, name = STORM_KEYS[key]
            if value is not None:
                tables[table][name] = tupled(value)
        elif isinstance(key, str) and key.startswith("storm.oci."):
            raise ConfigError(key, "unknown key")
    rename = {f"{t}.{n}": k for k, (t, n) in STORM_KEYS.items()}
    return config_from_mapping(tables, rename=rename)
