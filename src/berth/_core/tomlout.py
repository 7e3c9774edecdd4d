"""A node config as berth.toml text (``berth config --from-storm``).

Only what differs from berth's defaults is written, so the file says exactly what the storm.yaml
changes; loading it gives the same config. A small writer for the few shapes the config has
(strings, numbers, booleans, lists, one map, one list of tables): JSON's string escapes are
valid TOML basic-string escapes.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from pydantic import BaseModel

from .config import NodeConfig


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_value(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML form for {v!r}")


def _table(name: str, model: BaseModel, skip: tuple[str, ...] = ()) -> list[str]:
    data = model.model_dump(exclude_defaults=True, exclude=set(skip))
    scalars = {k: v for k, v in data.items() if not (isinstance(v, list | tuple) and v and isinstance(v[0], dict))}
    lines = [f"[{name}]", *(f"{k} = {_value(v)}" for k, v in scalars.items())]
    for key, rows in data.items():
        if key not in scalars:
            for row in rows:
                lines += ["", f"[[{name}.{key}]]", *(f"{k} = {_value(v)}" for k, v in row.items())]
    return lines


def config_toml(config: NodeConfig, header: str = "") -> str:
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    storm = config.storm
    for name in NodeConfig.model_fields:
        section = getattr(config, name)
        if name == "runtime_tables":
            for table, data in section.items():
                out += ["", f"[{table}]", *(f"{k} = {_value(v)}" for k, v in data.items())]
            continue
        if section is None or name == "runtime_reserved":
            continue
        skip: tuple[str, ...] = ("unused_keys", "notes") if name == "storm" else ()
        if name == "node":
            # the hostname default is this machine's, not the file's: write it only if it was set
            skip = () if "name" in section.model_fields_set else ("name",)
        lines = _table(name, section, skip)
        if name == "storm":
            lines.insert(1, "# Storm's semantics for this node (docs/storm.md); empty: Storm's defaults")
        if len(lines) > 1:
            out += ["", *lines]
    if storm is not None:
        if storm.notes:
            out += ["", "# Notes from the storm.yaml:"]
            for note in storm.notes:
                out += [f"#   {line}" for line in textwrap.wrap(note, 96, subsequent_indent="  ")]
        if storm.unused_keys:
            out += ["", "# Storm keys not used by berth (accepted, no effect):",
                    *(f"#   {k}" for k in storm.unused_keys)]
    return "\n".join(out).lstrip("\n") + "\n"
