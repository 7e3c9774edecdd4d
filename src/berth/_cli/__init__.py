"""The ``berth`` command line and its views (tables, the demo): presentation only.

The top layer: it may import every other layer; nothing imports it but the entry point.
"""

from . import cluster as _cluster_commands  # noqa: F401 - registers agent, schedule and cluster on main
from . import shim as _shim_commands  # noqa: F401 - registers the shim group on main
from .main import main

__all__ = ["main"]
