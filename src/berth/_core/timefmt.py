"""Engine timestamps: RFC 3339 with nanoseconds, which Python's parser does not take as is."""

from __future__ import annotations

import re
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
