"""An exit callback for tests, shared by the unit tests (fake runtime) and the integration tests."""

from __future__ import annotations

import threading

from berth import ExitRecord

WAIT = 120.0
"""An upper bound for anything a worker does in a test; reached only when something is broken."""


class Exits:
    """An exit callback that keeps every record and lets a test wait for them."""

    def __init__(self) -> None:
        self.records: list[ExitRecord] = []
        self.cond = threading.Condition()

    def __call__(self, rec: ExitRecord) -> None:
        with self.cond:
            self.records.append(rec)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT) -> list[ExitRecord]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.records) >= n, timeout), self.records
            return list(self.records)

    def of(self, worker_id: str) -> ExitRecord:
        with self.cond:
            assert self.cond.wait_for(lambda: any(r.worker_id == worker_id for r in self.records), WAIT)
            return next(r for r in self.records if r.worker_id == worker_id)
