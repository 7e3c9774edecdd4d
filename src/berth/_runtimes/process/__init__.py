"""The process runtime: workers as plain child processes of this berth, for development only.

No isolation (so the audit has nothing to check and says so), no table of its own.
"""

from __future__ import annotations

from ..._core.config import NodeConfig
from ..base import Capabilities, Runtime
from ..registry import RuntimePlugin

CAPABILITIES = Capabilities(isolated=False, exact_status=True, survives_restart=False, oom_reported=False,
                            host_dirs=True, cidfile=True)


def _make(config: NodeConfig) -> Runtime:
    from .runtime import ProcessRuntime

    return ProcessRuntime(config)


PLUGIN = RuntimePlugin(name="process", make=_make, capabilities=CAPABILITIES,
                       summary=lambda config: "runtime process (plain processes, no isolation: development only)")
