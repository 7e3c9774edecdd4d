"""The files people write for berth (a worker spec, a node config, a storm.yaml, assignments, a
topologies file), read one way: at most a bound of bytes, UTF-8, then parsed; each failure is one
typed error naming the file's role. A file past the bound is refused, never cut and parsed: the
first part of a YAML document is often a valid document with less in it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from .._exceptions import BerthError

MAX_FILE_BYTES = 4 * 1024 * 1024


def read_bytes(path: str | os.PathLike[str], field: str, error: type[BerthError],
               max_bytes: int = MAX_FILE_BYTES, what: str = "") -> bytes:
    """``what`` names the file in the errors (``the seccomp profile``); by default its path alone."""
    name = f"{what} {os.fspath(path)}" if what else os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(field, f"cannot read {name}: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise error(field, f"{name} is larger than {max_bytes} bytes")
    return raw


def read_text(path: str | os.PathLike[str], field: str, error: type[BerthError],
              max_bytes: int = MAX_FILE_BYTES) -> str:
    raw = read_bytes(path, field, error, max_bytes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(field, f"cannot read {os.fspath(path)}: {exc}") from exc


def read_document(path: str | os.PathLike[str], field: str, error: type[BerthError],
                  max_bytes: int = MAX_FILE_BYTES) -> Any:
    """YAML (safe: no tags that construct objects), or JSON for a ``.json`` file."""
    text = read_text(path, field, error, max_bytes)
    is_json = os.fspath(path).endswith(".json")
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise error(field, f"{os.fspath(path)} is not valid {'JSON' if is_json else 'YAML'}: {exc}") from exc
