"""For every test: a move of a worker's phase that the supervisor's phase table does not allow is
a bug, and fails the test that made it (production logs it and goes on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from berth._service import phase


@pytest.fixture(autouse=True)
def strict_phase_table() -> Iterator[None]:
    phase.STRICT = True
    phase.VIOLATIONS.clear()
    yield
    found = list(phase.VIOLATIONS)
    phase.VIOLATIONS.clear()
    assert not found, f"illegal transitions of the phase table: {found}"
