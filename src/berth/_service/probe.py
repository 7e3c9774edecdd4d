"""A health check that may block (the engine, the runc monitor), asked off the caller's thread.

``/healthz`` must answer whatever the runtime does: a stuck engine call or a stopped berth-shim
would otherwise hold the request (and the server's thread) for as long as it is stuck, and say
nothing. The check runs in a thread of its own, at most once per ``every``; a caller gets the last
answer at once, or ``unresponsive`` while an answer is overdue (``timeout``). Only the very first
call waits for an answer, and no longer than ``timeout``. At most one check runs at a time, so a
check that never returns costs one thread, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

UNRESPONSIVE = "unresponsive"


class Probe:
    def __init__(self, check: Callable[[], str], every: float = 1.0, timeout: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._check, self.every, self.timeout, self._clock = check, every, timeout, clock
        self._lock = threading.Lock()
        self._last: str | None = None
        self._at: float | None = None
        self._since: float | None = None
        """When the check under way began; None when none runs."""
        self._answered = threading.Event()

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if self._since is None and (self._at is None or now - self._at >= self.every):
                self._since = now
                threading.Thread(target=self._run, name="berth-health", daemon=True).start()
            first = self._last is None
        if first:
            self._answered.wait(self.timeout)
        with self._lock:
            if self._since is not None and self._clock() - self._since >= self.timeout:
                return UNRESPONSIVE
            return self._last or UNRESPONSIVE

    def _run(self) -> None:
        try:
            answer = self._check()
        except Exception as exc:
            answer = f"error: {exc}"
        with self._lock:
            self._last, self._at, self._since = answer, self._clock(), None
        self._answered.set()
