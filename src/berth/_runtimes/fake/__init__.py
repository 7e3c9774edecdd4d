"""The in-memory runtime for unit tests of the node and the supervisor (``runtime.FakeRuntime``).

Not one of the built-in names: a test registers it (``PLUGIN``) to have ``node.runtime = "fake"``.
"""

from __future__ import annotations

from ..._core.config import NodeConfig
from ..base import Capabilities, Runtime
from ..registry import RuntimePlugin

CAPABILITIES = Capabilities(isolated=False, exact_status=True, survives_restart=True, oom_reported=True,
                            host_dirs=True, cidfile=True)


def _make(config: NodeConfig) -> Runtime:
    from .runtime import FakeRuntime

    return FakeRuntime(config)


PLUGIN = RuntimePlugin(name="fake", make=_make, capabilities=CAPABILITIES)
