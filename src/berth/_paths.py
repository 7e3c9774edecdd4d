"""One rule for "this path is that directory or lies below it", used wherever a path is checked."""

from __future__ import annotations


def is_under(path: str, parent: str) -> bool:
    """True when ``path`` is ``parent`` or below it; every path is under ``/``. Both are taken as
    normalised absolute paths: no ``..`` and no trailing ``/`` (except ``/`` itself)."""
    return path == parent or parent == "/" or path.startswith(parent.rstrip("/") + "/")
