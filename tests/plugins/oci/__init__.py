"""An OCI runtime from outside berth: any program with runc's command line (crun, youki, runc).

What a new OCI runtime takes, all of it: this folder, and one call to ``berth.register_runtime``.
It has its own name (``oci``), its own table (``[oci]``: the program and the image directories,
the keys of ``[runc]``), its own state directory (``<state_dir>/oci``, its own berth-shim) and its
declared capabilities; berth's runc machinery (the OCI renderer, the bundles, the shim) does the
rest, started with this table's program. The tests run it with runc itself under this name
(this machine has no crun), through the conformance suite.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from berth import Capabilities, NodeConfig, Runtime, RuntimePlugin
from berth._runtimes.runc.config import RuncSection, runc_images
from berth._runtimes.runc.runtime import RuncRuntime

NAME = "oci"


class OciSection(RuncSection):
    """``[oci]``: ``binary`` names the OCI runtime's program; the rest as ``[runc]``."""

    @classmethod
    def of(cls, config: NodeConfig) -> OciSection:
        return cls.model_validate(config.runtime_tables.get(NAME, {}))


def make(config: NodeConfig) -> Runtime:
    return RuncRuntime(config, OciSection.of(config), name=NAME)


def check(config: NodeConfig, section: BaseModel | None, rename: Mapping[str, str]) -> None:
    assert isinstance(section, OciSection)
    runc_images(config.images.default, section, False, {"runc.images": f"{NAME}.images", **rename})


PLUGIN = RuntimePlugin(
    name=NAME, make=make, section=OciSection, check=check,
    capabilities=Capabilities(isolated=True, exact_status=True, survives_restart=True, oom_reported=True,
                              host_dirs=True, cidfile=True, starters=("runc:[", "crun")),
    reserved=lambda config: tuple(p for p in (OciSection.of(config).root,) if p))
