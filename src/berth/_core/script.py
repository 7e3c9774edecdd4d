"""The worker script: Storm's format, with every token single-quoted.

Inside single quotes a POSIX shell takes every byte literally except the quote itself, so a
quote is closed, emitted as ``"'"`` and reopened. That one rule makes any string (newlines,
``$``, backticks, unicode) reach the worker unchanged, in ``sh`` as in ``bash``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def quote(token: str) -> str:
    if "\0" in token:
        # A shell word cannot hold NUL; the spec refuses it earlier, this is the last guard.
        raise ValueError("a shell token cannot contain NUL")
    return "'" + token.replace("'", "'\"'\"'") + "'"


def shell_line(tokens: Iterable[str]) -> str:
    return " ".join(quote(t) for t in tokens)


def render_script(command: Iterable[str], env: Mapping[str, str], umask: str | None) -> str:
    """Byte for byte what Storm's ``ServerUtils.writeScript`` writes (no newline after the
    ``exec`` line), with the variables in the request's order."""
    lines = ["#!/bin/bash"]
    lines += [shell_line(["export", f"{k}={v}"]) + ";" for k, v in env.items()]
    lines.append("")
    if umask is not None:
        lines.append(f"umask {umask}")
    lines.append("exec " + shell_line(command) + ";")
    return "\n".join(lines)
