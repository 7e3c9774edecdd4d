"""The ``berth`` command line and its views (tables, the demo): presentation only.

The top layer: it may import every other layer; nothing imports it but the entry point.
Importing the command modules registers their commands on the group ``app.main``.
"""

from . import cluster as _cluster_commands  # noqa: F401 - agent, schedule, cluster
from . import commands as _node_commands  # noqa: F401 - explain, launch, ps, kill, rm, logs, audit, demo, …
from . import launcher as _launcher_commands  # noqa: F401 - worker-launcher install
from . import service as _service_commands  # noqa: F401 - supervise, serve
from .app import add_runtime_commands, main

add_runtime_commands()  # each runtime's own (runc: shim)

__all__ = ["main"]
