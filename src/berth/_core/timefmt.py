"""berth's one spelling of a moment, RFC 3339 in UTC with a ``Z``: written (each source keeps the
precision it has: the engine's events carry nanoseconds, a clock float microseconds) and read back
(Python's parser does not take nanoseconds as they are). berth-shim spells times the same way with
its own copy (``_runtimes/runc/shim/files.now_iso``): it is a program of its own that imports only
the standard library.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

_TS = re.compile(r"([^.Z+]+)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")


def parse_time(value: str) -> datetime:
    m = _TS.fullmatch(value)
    if not m:
        raise ValueError(f"not a timestamp: {value!r}")
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    tz = m.group(3) or "Z"
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{'+00:00' if tz == 'Z' else tz}")


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (parse_time(end) - parse_time(start)).total_seconds()


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
