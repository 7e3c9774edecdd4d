"""Prometheus metrics for a supervised node.

Counters are fed by the supervisor's events (``bus``); gauges that describe *now* (workers by
state, memory per worker) are computed at scrape time, so they can never drift from the truth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._exceptions import BerthError
from .._runtimes.base import WorkerState
from .bus import Event, Exited, Forgotten, Launched, LaunchFailed
from .decisions import ExitCause
from .probe import OK, EngineProbe
from .supervisor import Supervisor


class _LiveCollector(Collector):
    def __init__(self, sup: Supervisor, probe: EngineProbe) -> None:
        self.sup = sup
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("berth_workers", "Assigned workers by supervisor phase.", labels=["state"])
        for state, n in self.sup.counts().items():
            by_state.add_metric([state], n)
        yield by_state
        view = self.probe.look()  # within a second, whatever the engine does (then the last memory read)
        yield GaugeMetricFamily("berth_engine_up", "1 while the engine answers (a listing within 0.8 s).",
                                value=1 if view.state == OK else 0)
        mem = GaugeMetricFamily("berth_worker_memory_bytes", "Memory of each running worker, from its cgroup.",
                                labels=["worker"])
        yield from self._capacity(view.workers)
        for wid, n in sorted(view.memory.items()):
            mem.add_metric([wid], n)
        yield mem


    def _capacity(self, listed: list[WorkerState]) -> Iterator[Metric]:
        node = self.sup.node
        cap = GaugeMetricFamily("berth_node_capacity", "What the node's workers together may hold, by resource "
                                "(memory_mb, cpu_percent, pids; absent where unknown).", labels=["resource"])
        held = GaugeMetricFamily("berth_node_admitted", "What the node's workers hold now (their limits: running "
                                 "and between two runs), by resource, and how many workers.",
                                 labels=["resource"])
        try:
            c = node.capacity
            used = node.usage(listed, held=set(self.sup.desired()), launching=False)
        except BerthError:
            return
        for name, value in (("memory_mb", c.memory_mb), ("cpu_percent", c.cpu_percent), ("pids", c.pids)):
            if value is not None:
                cap.add_metric([name], value)
        for name, value in (("memory_mb", used.memory_mb), ("cpu_percent", used.cpu_percent), ("pids", used.pids),
                            ("workers", used.workers)):
            held.add_metric([name], value)
        yield cap
        yield held


class Metrics:
    """Counters labelled by worker are dropped when the worker leaves the node (``forget``), so
    worker-id churn cannot grow the scrape without bound."""

    def __init__(self, sup: Supervisor, probe: EngineProbe | None = None) -> None:
        self.probe = probe or EngineProbe(sup.node)
        """Shared with /healthz: one engine probe per app."""
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``_created`` series: noise for every counter
        self.registry = CollectorRegistry()
        r = self.registry
        self.launches = Counter("berth_launches", "Workers launched.", registry=r)
        self.launch_failures = Counter("berth_launch_failures", "Launches that failed.", registry=r)
        self.exits = Counter("berth_exits", "Worker exits by worker and cause: stop (planned, by berth or an "
                             "operator), crash (non-zero or signal), oom, stalled (killed: its PID 1 stayed stopped), "
                             "exit (code 0).", ["worker", "cause"],
                             registry=r)
        self.exit_codes = Counter("berth_exit_codes", "Unplanned worker exits by exit code.", ["code"], registry=r)
        self.oom_kills = Counter("berth_oom_kills", "Workers ended by the OOM killer.", registry=r)
        self.restarts = Counter("berth_restarts", "Restarts of assigned workers after an exit, by worker.",
                                ["worker"], registry=r)
        self.launch_seconds = Histogram("berth_launch_seconds", "Time to launch one worker.", registry=r,
                                        buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10))
        self._labels: dict[str, set[tuple[str, ...]]] = {}
        self._gone: dict[str, None] = {}
        r.register(_LiveCollector(sup, self.probe))
        sup.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        match event:
            case Launched(worker_id=wid, seconds=seconds, restart=restart):
                self._gone.pop(wid, None)
                if restart:
                    self.restarts.labels(worker=wid).inc()
                self.launches.inc()
                self.launch_seconds.observe(seconds)
            case LaunchFailed():
                self.launch_failures.inc()
            case Exited(worker_id=wid, record=rec, cause=cause):
                self._exited(wid, rec.exit_code, rec.oom_killed, cause)
            case Forgotten(worker_id=wid):
                self._forget(wid)

    def _exited(self, wid: str, code: int | None, oom: bool, cause: ExitCause) -> None:
        if wid not in self._gone:  # the last exit of a removed worker can come after its removal
            self.exits.labels(worker=wid, cause=cause.value).inc()
            self._labels.setdefault(wid, set()).add((cause.value,))
        if cause != ExitCause.STOP:
            self.exit_codes.labels(code=str(code)).inc()
        if oom:
            self.oom_kills.inc()

    def _forget(self, wid: str) -> None:
        self._gone[wid] = None
        while len(self._gone) > 4096:
            self._gone.pop(next(iter(self._gone)))
        for (cause,) in self._labels.pop(wid, set()):
            with contextlib.suppress(KeyError):
                self.exits.remove(wid, cause)
        with contextlib.suppress(KeyError):
            self.restarts.remove(wid)

    def render(self) -> bytes:
        return generate_latest(self.registry)
