"""Is the engine answering? ``/healthz`` and ``/metrics`` ask, and are answered at once from what
one probe thread last saw: a frozen dockerd (SIGSTOPped, or stuck) does not answer at all, and a
request handler that asked it would hang with it, for as long as it stays frozen.

The probe lists the node's workers (and reads the memory of the running ones from their cgroups)
at most once per ``every_s``, and only while someone asks (it stops after ``idle_s`` without a
question). A listing that has not come back within ``timeout_s`` is reported as ``not answering``;
one that failed as ``unreachable``. At most one probe is in flight, whatever the number of
requests: a caller cannot turn health checks into a stream of engine calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._exceptions import BerthError
from .._node.node import Node
from .._runtimes.base import WorkerState

OK, UNREACHABLE, NOT_ANSWERING, UNKNOWN = "ok", "unreachable", "not answering", "unknown"


@dataclass(frozen=True)
class EngineView:
    state: str
    """ok | unreachable | not answering | unknown (no answer yet)"""
    workers: list[WorkerState] = field(default_factory=list)
    """The last listing that came back."""
    memory: dict[str, int] = field(default_factory=dict)
    """Running worker -> memory in bytes, read with that listing."""
    reason: str | None = None


class EngineProbe:
    def __init__(self, node: Node, every_s: float = 1.0, timeout_s: float = 1.0, idle_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.every_s, self.timeout_s, self.idle_s = every_s, timeout_s, idle_s
        self._clock = clock
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._asked = 0.0
        self._since: float | None = None
        """When the probe in flight began (None: none in flight)."""
        self._done_at: float | None = None
        self._view = EngineView(UNKNOWN)

    def look(self) -> EngineView:
        """What the engine last said, never waiting on it (only, at the very first question, up to
        ``timeout_s`` for the first answer)."""
        with self._lock:
            self._asked = self._clock()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="berth-engine-probe", daemon=True)
                self._thread.start()
            self._lock.notify_all()
            if self._done_at is None:
                self._lock.wait_for(lambda: self._done_at is not None, timeout=self.timeout_s)
            now = self._clock()
            if self._since is not None and now - self._since >= self.timeout_s:
                return EngineView(NOT_ANSWERING, self._view.workers, self._view.memory,
                                  f"no answer to a listing for {now - self._since:.1f}s")
            return self._view

    def _loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    now = self._clock()
                    if now - self._asked > self.idle_s:
                        self._thread = None  # nobody asks: the next question starts a new one
                        return
                    due = (self._done_at or -self.every_s) + self.every_s
                    if now >= due:
                        break
                    self._lock.wait(timeout=due - now)
                self._since = now
            view = self._probe()
            with self._lock:
                self._view, self._since, self._done_at = view, None, self._clock()
                self._lock.notify_all()

    def _probe(self) -> EngineView:
        try:
            workers = self.node.ps()
        except BerthError as exc:
            return EngineView(UNREACHABLE, self._view.workers, self._view.memory, exc.reason)
        memory = {}
        for w in workers:
            if w.running:
                try:
                    memory[w.worker_id] = self.node.memory_usage(w.worker_id)
                except BerthError:
                    continue  # it ended between the listing and the read
        return EngineView(OK, workers, memory)
