"""The in-memory runtime for unit tests of the node and the supervisor (``runtime.FakeRuntime``).

Not one of the built-in names: a test registers it (``PLUGIN``) to have ``node.runtime = "fake"``.
Built by name, every runtime of one state dir is a connection to the same "engine" (its
containers outlive the ``Node`` that made them, as a real engine's do), so the conformance suite
can restart berth on it.
"""

from __future__ import annotations

from ..._core.config import NodeConfig
from ..base import Capabilities, Runtime
from ..registry import RuntimePlugin

CAPABILITIES = Capabilities(isolated=False, exact_status=True, survives_restart=True, oom_reported=True,
                            host_dirs=True, cidfile=True, runs_programs=False)
_engines: dict[str, Runtime] = {}


def _make(config: NodeConfig) -> Runtime:
    from .runtime import FakeRuntime

    engine = _engines.setdefault(config.state_dir, FakeRuntime(config))
    assert isinstance(engine, FakeRuntime)
    return engine.restarted()


PLUGIN = RuntimePlugin(name="fake", make=_make, capabilities=CAPABILITIES)
