"""Field checks the config's sections share (kept apart so that each section's module can use them)."""

from __future__ import annotations

import os
import re

IMAGE_PATTERN = re.compile(r"^(([a-zA-Z0-9.-]+)(:\d+)?/)?([a-z0-9_./-]+)(:[\w.-]+)?$")
"""Storm's image-reference pattern, kept verbatim so that the same names are accepted…"""


def valid_image(name: str) -> bool:
    """…except one that starts with '-': on a ``docker run`` line it would be read as an option."""
    return bool(IMAGE_PATTERN.match(name)) and not name.startswith("-")


def program(value: str) -> str:
    """A program to run: a plain name (looked up on PATH) or an absolute path, nothing a shell or
    an argv parser could read as something else."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+|(/[A-Za-z0-9_.+-]+)+", value):
        raise ValueError(f"must be a program name or absolute path, got {value!r}")
    return value


def absolute(value: str, what: str = "an absolute path") -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be {what}, got {value!r}")
    if "\0" in value or "\n" in value:
        raise ValueError("must not contain NUL or newline")
    if ":" in value:
        # Docker's -v syntax and Storm's command line split on ':'; such a path cannot be mounted
        # faithfully, so it is refused here instead of being mangled later.
        raise ValueError(f"must not contain ':', got {value!r}")
    return os.path.normpath(value)
