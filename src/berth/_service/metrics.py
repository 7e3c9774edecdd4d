"""Prometheus metrics for a supervised node.

Counters are fed by the supervisor's listener hook; gauges that describe *now* (workers by
state, memory per worker) are computed at scrape time, so they can never drift from the truth.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._exceptions import BerthError
from .supervisor import Supervisor


class _LiveCollector(Collector):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("berth_workers", "Workers by supervisor state.", labels=["state"])
        for state, n in self.sup.counts().items():
            by_state.add_metric([state], n)
        yield by_state
        mem = GaugeMetricFamily("berth_worker_memory_bytes", "Memory of each running worker, from its cgroup.",
                                labels=["worker"])
        try:
            running = [w for w in self.sup.node.ps() if w.running]
        except BerthError:
            running = []
        for w in running:
            try:
                mem.add_metric([w.worker_id], self.sup.node.memory_usage(w.worker_id))
            except BerthError:
                continue  # it ended between the listing and the read
        yield mem


class Metrics:
    def __init__(self, sup: Supervisor) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.launches = Counter("berth_launches", "Workers launched.", registry=r)
        self.launch_failures = Counter("berth_launch_failures", "Launches that failed.", registry=r)
        self.exits = Counter("berth_exits", "Worker exits by exit code.", ["code"], registry=r)
        self.oom_kills = Counter("berth_oom_kills", "Workers ended by the OOM killer.", registry=r)
        self.restarts = Counter("berth_restarts", "Restarts of assigned workers after an exit.", registry=r)
        self.launch_seconds = Histogram("berth_launch_seconds", "Time to launch one worker.", registry=r,
                                        buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10))
        r.register(_LiveCollector(sup))
        sup.listeners.append(self.on_event)

    def on_event(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "launch":
            self.launches.inc()
            self.launch_seconds.observe(float(data["seconds"]))
        elif kind == "launch_failed":
            self.launch_failures.inc()
        elif kind == "exit":
            self.exits.labels(code=str(data["exit_code"])).inc()
            if data.get("oom_killed"):
                self.oom_kills.inc()
        elif kind == "restart":
            self.restarts.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
