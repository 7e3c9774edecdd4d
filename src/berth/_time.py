"""One spelling of a moment for everything berth writes or serves: RFC 3339 in UTC with a ``Z``.

Each source keeps the precision it has (the engine's events carry nanoseconds, a clock float
microseconds), so a time read back compares equal to the one written. berth-shim spells times the
same way with its own copy (``_runtimes/runc/shim/files.now_iso``): it is a program of its own that
imports only the standard library.
"""

from __future__ import annotations

import time


def iso_utc(t: float | None = None, digits: int = 6) -> str:
    """``t`` (seconds since the epoch; now if None) with ``digits`` of fraction (0, 6 or 9), truncated."""
    t = time.time() if t is None else t
    secs = int(t)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if digits == 0:
        return head + "Z"
    return f"{head}.{int((t - secs) * 10 ** digits):0{digits}d}Z"


def iso_utc_ns(time_nano: int) -> str:
    """A time in integer nanoseconds (the engine's ``timeNano``), all nine digits kept."""
    secs, nanos = divmod(time_nano, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"
