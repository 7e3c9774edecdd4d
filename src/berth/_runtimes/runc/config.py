"""The ``[runc]`` section of the node config: the runc runtime's binary, state, images and filter."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..._core.config import NodeConfig
from ..._core.fields import absolute, program, valid_image
from ..._exceptions import ConfigError

_strict = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuncSection(BaseModel):
    """The runc runtime: no daemon, one monitor per node (``berth-shim``), images as root
    filesystem directories (no registry)."""

    model_config = _strict

    binary: str = "runc"
    """A program name (looked up on PATH when the shim starts) or an absolute path."""
    root: str | None = None
    """runc's ``--root`` (its state); default ``<state_dir>/runc/root``."""
    images: dict[str, str] = Field(default_factory=dict)
    """Image name -> read-only root filesystem directory, e.g. ``"berth/python:latest" = "/srv/rootfs/python"``."""
    image_root: str | None = None
    """Where ``berth/<name>:<tag>`` images not in ``images`` are found: ``<image_root>/<name>``."""
    default_seccomp: str = "/usr/share/containers/seccomp.json"
    """The Docker-format profile converted for workers when container.seccomp_profile is empty
    (Debian: golang-github-containers-common)."""
    seccomp_compat_arches: bool = False
    """Also filter (and so allow) the profile's compatible architectures (x86 and x32 on x86_64).
    Off: the filter covers the native architecture only and any 32-bit system call is refused, which
    also makes each launch ~15 ms cheaper (runc compiles one filter per architecture)."""

    @classmethod
    def of(cls, config: NodeConfig) -> RuncSection:
        """The node's ``[runc]`` table, parsed (``_runtimes.registry.check_config`` checked it at load)."""
        return cls.model_validate(config.runtime_tables.get("runc", {}))

    @field_validator("root", "image_root")
    @classmethod
    def _dirs(cls, v: str | None) -> str | None:
        return None if v is None else absolute(v)

    def image_path(self, image: str) -> str | None:
        """Where ``image``'s root filesystem directory is said to be: ``images``, else
        ``<image_root>/<name>`` for ``berth/<name>[:tag]`` (whether it exists is the runtime's question)."""
        path = self.images.get(image)
        if path is None and self.image_root and image.startswith("berth/"):
            name = image[len("berth/"):].split(":", 1)[0]
            if name and "/" not in name and name not in (".", ".."):
                path = os.path.join(self.image_root, name)
        return path

    @field_validator("default_seccomp")
    @classmethod
    def _seccomp(cls, v: str) -> str:
        return absolute(v)

    @field_validator("binary")
    @classmethod
    def _binary(cls, v: str) -> str:
        return program(v)

    @field_validator("images")
    @classmethod
    def _images(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            if not valid_image(name):
                raise ValueError(f"{name!r} is not a valid image reference")
            try:
                absolute(path)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
        return {k: os.path.normpath(p) for k, p in v.items()}


def runc_images(default: str | None, runc: RuncSection, storm: bool, rename: Mapping[str, str]) -> None:
    """The runc runtime runs images from root filesystem directories, named in the config: say so
    at load, not at every launch. (Whether the directory exists is checked at launch, as the
    engine's images are.)"""
    key = rename.get("runc.images", "runc.images")
    if storm:
        why = ("storm.resource.isolation.plugin selects RuncLibContainerManager, which berth runs with runc from a "
               "root filesystem directory per image (Storm's HDFS image layers are not read)")
        how = (f"map each image in the storm.yaml (Storm ignores the key), e.g. {key}: {{\"{default or 'img:tag'}\": "
               "/srv/rootfs/worker}, or berth.runc.image.root for berth/<name> images")
    else:
        why = "runtime runc runs each image from a root filesystem directory"
        how = "set [runc.images] (image -> directory) or runc.image_root (berth/<name>:<tag> -> <image_root>/<name>)"
    if default is not None and runc.image_path(default) is None:
        what = f"storm.oci.image {default}" if storm else f"images.default {default}"
        raise ConfigError(key, f"{why}, and {what} has none: {how}")
    if default is None and not runc.images and not runc.image_root:
        raise ConfigError(key, f"{why}, and none is named: {how}")
