"""The runc runtime: workers as runc containers, no daemon, one monitor per node (``berth-shim``).

Owns its config table (``config.RuncSection``, ``[runc]``), its renderer (``oci``: the plan as an
OCI ``config.json``), each worker's bundle (``bundle``), the shim (``shim/``, standard library
only) and its client, the ``berth shim …`` commands (``cli``), and the runtime (``runtime``,
imported only when a config chooses runc).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from ..._core.config import NodeConfig
from ..base import Capabilities, Runtime
from ..registry import RuntimePlugin
from .config import RuncSection, runc_images

CAPABILITIES = Capabilities(isolated=True, exact_status=True, survives_restart=True, oom_reported=True,
                            host_dirs=True, cidfile=True, starters=("runc:[",))


def _make(config: NodeConfig) -> Runtime:
    from .runtime import RuncRuntime

    return RuncRuntime(config)


def _check(config: NodeConfig, section: BaseModel | None, rename: Mapping[str, str]) -> None:
    assert isinstance(section, RuncSection)
    runc_images(config.images.default, section, config.storm is not None, rename)


def _reserved(config: NodeConfig) -> tuple[str, ...]:
    root = RuncSection.of(config).root
    return (root,) if root else ()


def _stop_shim(config: NodeConfig) -> None:
    from .runtime import RuncRuntime

    RuncRuntime(config).shim.stop()


PLUGIN = RuntimePlugin(
    name="runc", make=_make, capabilities=CAPABILITIES, section=RuncSection, check=_check, reserved=_reserved,
    commands="berth._runtimes.runc.cli:commands", stop_helpers=_stop_shim,
    summary=lambda config: "runtime runc (no daemon: berth-shim, exact exit statuses)")
