"""The worker request: what one worker should run, as the cluster asked for it.

Everything here is untrusted input. The model checks shape and the values that make sense on
any node (ids, port, env names, NUL bytes); what depends on the node (image, cores, identity,
mounts) is checked when the plan is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._exceptions import SpecError
from .docfile import read_document
from .limits import MAX_ARG_STRLEN
from .validation import raise_validation

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{1,127}")
"""Ids become path components and container names: a conservative set, no '/', no leading '.',
and at least two characters, the engine's minimum for a container name."""

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SHELL_RESERVED = frozenset({
    "_", "UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "SHLVL", "RANDOM", "SRANDOM", "SECONDS",
    "LINENO", "GROUPS", "HISTCMD", "FUNCNAME", "OPTIND", "DIRSTACK", "EPOCHSECONDS", "EPOCHREALTIME",
})
"""Variables the worker shell owns: bash makes them read-only or rewrites them before ``exec``, so
a value given for one would silently not reach the worker. Refused, like any ``BASH*`` name."""


def _clean_text(value: str, what: str) -> str:
    if "\0" in value:
        raise ValueError(f"{what} must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid unicode (lone surrogate)") from None
    return value


def _check_id(value: str) -> str:
    _clean_text(value, "id")
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} must be 2-128 of A-Z a-z 0-9 '_' '.' '-', starting with a letter or digit")
    return value


class WorkerSpec(BaseModel):
    """One worker request; immutable and valid once constructed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    worker_id: str
    topology_id: str
    port: int = Field(ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64)
    command: tuple[str, ...] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    cpu_percent: int | None = Field(default=None, ge=1)
    memory_mb: int | None = Field(default=None, ge=6)
    cores: tuple[int, ...] | None = None
    numa_node: int | None = Field(default=None, ge=0)
    pids_limit: int | None = Field(default=None, ge=1)

    @field_validator("worker_id", "topology_id")
    @classmethod
    def _ids(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        _clean_text(v, "user")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", v):
            raise ValueError(f"{v!r} is not a valid user name")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, arg in enumerate(v):
            _clean_text(arg, f"argument {i}")
            size = len(arg.encode()) + 1
            if size > MAX_ARG_STRLEN:
                raise ValueError(f"argument {i} is {size - 1} bytes; the kernel takes at most {MAX_ARG_STRLEN - 1}")
        if not v[0]:
            raise ValueError("the program (argument 0) must not be empty")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid variable name (letters, digits, '_')")
            if name in SHELL_RESERVED or name.startswith("BASH"):
                raise ValueError(f"{name!r} is owned by the worker shell and would not reach the worker")
            _clean_text(value, f"value of {name}")
            size = len(name.encode()) + len(value.encode()) + 1
            if size > MAX_ARG_STRLEN - 1:
                raise ValueError(f"{name}=… is {size} bytes; the kernel takes at most {MAX_ARG_STRLEN - 1} "
                                 "per variable")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else _clean_text(v, "image")

    @field_validator("cores")
    @classmethod
    def _cores(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("must list at least one core (or be omitted)")
        if any(c < 0 for c in v):
            raise ValueError("core numbers must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("lists a core twice")
        return v

    @model_validator(mode="before")
    @classmethod
    def _lists_to_tuples(cls, data: Any) -> Any:
        # YAML and JSON give lists; the model stores tuples so that a spec is hashable and frozen.
        if isinstance(data, Mapping):
            data = dict(data)
            for key in ("command", "cores"):
                if isinstance(data.get(key), list):
                    data[key] = tuple(data[key])
        return data


def spec_digest(spec: WorkerSpec) -> str:
    """A short, stable digest of the request: a container carries it, so a changed assignment
    (image, limits, command, env) is recognised even by a berth that restarted."""
    import hashlib

    # exclude_defaults: a field added to WorkerSpec later (with a default) leaves digests unchanged,
    # so upgrading berth does not make a supervisor replace every running worker.
    canonical = json.dumps(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_from_mapping(data: Any, source: str = "spec") -> WorkerSpec:
    if not isinstance(data, Mapping):
        raise SpecError(source, f"must be a mapping of worker fields, got {type(data).__name__}")
    try:
        return WorkerSpec.model_validate(data)
    except ValidationError as exc:
        raise raise_validation(exc, SpecError) from None


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a spec file (YAML or JSON) into a mapping, without validating its fields."""
    data = read_document(path, "spec", SpecError)
    if not isinstance(data, dict):
        raise SpecError("spec", f"{path} must hold a mapping of worker fields")
    return data


def load_spec(path: str | Path) -> WorkerSpec:
    return spec_from_mapping(read_spec_file(path))
