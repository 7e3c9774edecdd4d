"""The one time spelling (berth._core.timefmt), with exact values."""

from __future__ import annotations

from berth._core.timefmt import iso_utc, iso_utc_ns


def test_each_precision_is_spelled_exactly_and_truncated() -> None:
    t = 1_700_000_000.25
    assert iso_utc(t) == "2023-11-14T22:13:20.250000Z"
    assert iso_utc(t, digits=0) == "2023-11-14T22:13:20Z"
    assert iso_utc(t, digits=9) == "2023-11-14T22:13:20.250000000Z"
    assert iso_utc(0.9999999) == "1970-01-01T00:00:00.999999Z"  # truncated, never rounded into the next second
    assert iso_utc_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_now_is_utc_with_a_z() -> None:
    assert iso_utc(digits=0).endswith("Z") and len(iso_utc(digits=0)) == 20
