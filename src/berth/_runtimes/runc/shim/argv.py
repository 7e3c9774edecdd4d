"""The shim's own command line (what starts it, and what it re-executes itself with on upgrade)."""

from __future__ import annotations

import os
import sys

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(base: str, runc: str, root: str, python: str | None = None) -> list[str]:
    """The shim's command line: the package is loaded from its directory alone (``-I``: no
    environment, no user site), so starting it never imports berth or its dependencies."""
    boot = (f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); "
            "from shim.daemon import main; sys.exit(main(sys.argv[1:]))")
    return [python or sys.executable, "-I", "-c", boot, "--dir", base, "--runc", runc, "--root", root]
