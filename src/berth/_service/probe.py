"""Is the engine answering? ``/healthz`` and ``/metrics`` ask, and are answered within
``timeout_s`` whatever the engine does: a frozen dockerd (SIGSTOPped, or stuck) does not answer
at all, and a request handler that asked it itself would hang with it, for as long as it stays
frozen.

The asking is done by a probe thread (the runtime's own health check, ``Runtime.health``: the
engine, or berth-shim's ``hello``; then a listing of the node's workers, and the memory of the
running ones from their cgroups); a question waits for it at most until ``timeout_s`` after the
probe began, and a probe not back by then is reported as ``not answering`` (one that failed:
``unreachable``; a runtime that says what is wrong, ``shim unresponsive`` say, is reported in
its own words, also while the next probe is overdue), with the last listing that did come back.
At most one probe is in flight, whatever the number of questions, and ``max_age_s`` lets a caller
take a recent answer instead (``/healthz`` needs no token: it must not turn into a stream of engine
calls).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .._exceptions import BerthError
from .._node.node import Node
from .._runtimes.base import WorkerState

OK, UNREACHABLE, NOT_ANSWERING = "ok", "unreachable", "not answering"
ANSWER_S = 0.8
"""How long a question waits for the probe in flight (from its start): the answer comes within a second."""


@dataclass(frozen=True)
class EngineView:
    state: str
    """ok | unreachable | not answering | what the runtime's health check said (``shim unresponsive``)"""
    workers: list[WorkerState] = field(default_factory=list)
    """The last listing that came back."""
    memory: dict[str, int] = field(default_factory=dict)
    """Running worker -> memory in bytes, read with that listing."""
    reason: str | None = None


class EngineProbe:
    def __init__(self, node: Node, timeout_s: float = ANSWER_S) -> None:
        self.node = node
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._since: float | None = None
        """When the probe in flight began (None: none in flight)."""
        self._done_at: float | None = None
        self._view = EngineView(NOT_ANSWERING, reason="not asked yet")

    def look(self, max_age_s: float = 0.0) -> EngineView:
        """The engine's answer, from a probe begun at most ``max_age_s`` ago or begun now; never
        waiting past ``timeout_s`` after the probe in flight began."""
        with self._cond:
            now = time.monotonic()
            if self._since is None and self._done_at is not None and now - self._done_at <= max_age_s:
                return self._view
            if self._since is None:
                self._since = now
                threading.Thread(target=self._probe, name="berth-engine-probe", daemon=True).start()
            began = self._since
            self._cond.wait_for(lambda: self._since is None, timeout=max(0.0, began + self.timeout_s - now))
            if self._since is not None:
                if self._view.state not in (OK, NOT_ANSWERING):
                    return self._view  # a known trouble, more precise than "not answering"
                return EngineView(NOT_ANSWERING, self._view.workers, self._view.memory,
                                  f"a listing asked {time.monotonic() - self._since:.1f}s ago has not come back")
            return self._view

    def _probe(self) -> None:
        with self._cond:
            last = self._view
        try:
            view = self._ask(last)
        except Exception as exc:  # whatever it was, the next question must find no probe in flight
            reason = exc.reason if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
            view = EngineView(UNREACHABLE, last.workers, last.memory, reason)
        with self._cond:
            self._view, self._since, self._done_at = view, None, time.monotonic()
            self._cond.notify_all()

    def _ask(self, last: EngineView) -> EngineView:
        health = self.node.health()
        if health != OK:
            return EngineView(health, last.workers, last.memory, health)
        workers = self.node.ps()
        memory = {}
        for w in workers:
            if w.running:
                try:
                    memory[w.worker_id] = self.node.memory_usage(w.worker_id)
                except Exception:  # it ended between the listing and the read (or worse): no number
                    continue
        return EngineView(OK, workers, memory)
