"""Text that others wrote, made safe to print: what a terminal would act on is shown escaped.

Worker ids and labels of containers started by hand, file names in an assignments directory,
what a node publishes in ZooKeeper, an engine's error text: printed raw, an escape sequence in
any of them could clear the operator's screen, set the window title, rewrite the line before
(a carriage return) or reorder what follows (a bidi override). Every place berth prints such data
goes through ``printable``; JSON output needs nothing (its encoder escapes control characters).
"""

from __future__ import annotations

import unicodedata

_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Controls (C0, DEL, C1), format characters (bidi overrides, zero-width), lone surrogates (bytes
that were not UTF-8), line and paragraph separators."""


def printable(text: str) -> str:
    """``text`` with each character a terminal would act on (or that breaks a line) as a Python
    escape: ``\\x1b``, ``\\n``, ``\\u202e``. One line in, one line out."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _ESCAPED else c for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if c in "\n\t\r":
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}[c]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
