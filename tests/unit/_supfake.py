"""A supervisor on the in-memory runtime, with a clock the test moves and waits driven by events.

The loop thread is real; the test waits for what it expects (a transition, a completed pass)
on a condition the supervisor's events signal, never for a length of time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from berth import Identity, Node, WorkerSpec
from berth._core.config import config_from_mapping
from berth._runtimes.fake.runtime import FakeRuntime
from berth._service.assignments import Assignments, parse_document
from berth._service.bus import Event, Exited, Forgotten, PassDone, PassFailed, Transition
from berth._service.supervisor import Supervisor

from .conftest import FOUR_CPUS

USERS = {"alice": Identity(user="alice", uid=3101, gid=3101, groups=(3101,)),
         "bob": Identity(user="bob", uid=3102, gid=3102, groups=(3102,))}
WAIT = 20.0


class Clock:
    """Supervisor time (monotonic seconds) and runtime time (epoch seconds) in one, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(base: Path, name: str = "n1", runtime: str = "docker", capacity: dict[str, Any] | None = None,
           **supervisor: Any) -> Any:
    settings = {"grace_s": 1.0, "backoff_base_s": 1.0, "backoff_cap_s": 16.0, "crashloop_after": 3,
                "healthy_after_s": 30.0, "resync_s": 3600.0, **supervisor}
    return config_from_mapping({
        "node": {"name": name, "local_dir": str(base / "local"), "log_dir": str(base / "log"),
                 "state_dir": str(base / "state"), "min_uid": 1000, "runtime": runtime},
        "images": {"default": "img:1", "allowed": ("img:2",)}, "container": {"mount_cgroup_root": False},
        "supervisor": settings, "capacity": capacity or {},
    })


def spec(wid: str, port: int, user: str = "alice", topology: str = "topo", **kw: Any) -> WorkerSpec:
    return WorkerSpec(worker_id=wid, topology_id=topology, port=port, user=user, command=("run",), **kw)


def doc(*specs: WorkerSpec, source: str = "test") -> Assignments:
    return parse_document({"workers": [s.model_dump(mode="json", exclude_defaults=True) for s in specs]}, source)


class Watch:
    """Counts passes and keeps every transition; ``until`` waits for a condition on them."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.cond = threading.Condition()
        self.lines: list[Mapping[str, Any]] = []
        """The events.jsonl line of each transition."""
        self.events: list[Event] = []
        """Every other event but the passes (launches, exits, forgotten workers)."""
        self.passes = 0
        self.failed_passes = 0
        sup.subscribe(self._on)

    def _on(self, event: Event) -> None:
        with self.cond:
            match event:
                case Transition(line=line):
                    self.lines.append(line)
                case PassDone():
                    self.passes += 1
                case PassFailed():
                    self.failed_passes += 1
                case _:
                    self.events.append(event)
            self.cond.notify_all()

    def exits(self) -> list[tuple[str, str]]:
        """(worker id, cause) of each exit so far."""
        with self.cond:
            return [(e.worker_id, e.cause.value) for e in self.events if isinstance(e, Exited)]

    def forgotten(self) -> list[str]:
        with self.cond:
            return [e.worker_id for e in self.events if isinstance(e, Forgotten)]

    def until(self, pred: Callable[[], bool], what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, WAIT), f"timed out waiting for {what}: {self.sup.statuses()}"

    def state(self, wid: str) -> str | None:
        return next((s.phase for s in self.sup.statuses() if s.worker_id == wid), None)

    def states(self) -> dict[str, str]:
        return {s.worker_id: s.phase for s in self.sup.statuses()}

    def settle(self) -> None:
        """Poke and wait for one more complete pass (after whatever the test just changed)."""
        with self.cond:
            target = self.passes + 1
        self.sup.poke()
        self.until(lambda: self.passes >= target, "a reconcile pass")


class Harness:
    def __init__(self, base: Path, fake: FakeRuntime | None = None, clock: Clock | None = None,
                 path: str | None = None, name: str = "n1", runtime: str = "docker",
                 capacity: dict[str, Any] | None = None, **settings: Any) -> None:
        self.clock = clock or Clock()
        self.fake = fake or FakeRuntime(clock=self.clock)
        self.config = config(base, name, runtime, capacity, **settings)
        self.node = Node(self.config, runtime=self.fake, host=FOUR_CPUS, identities=lambda u: USERS[u])
        # A pytest tmp dir lies under /tmp, which anyone may add to: the trust rule is tested on its own
        # (test_trust.py, and on the real engine).
        self.sup = Supervisor(self.node, assignments_path=path, clock=self.clock, wall=self.clock,
                              trust_source=False)
        self.watch = Watch(self.sup)

    def start(self) -> Harness:
        self.sup.start()
        return self

    def running(self, *wids: str) -> None:
        self.watch.until(lambda: all(self.watch.state(w) == "running" for w in wids), f"{wids} running")

    def containers(self) -> dict[str, str]:
        return {w.worker_id: w.container_id for w in self.fake.list_workers() if w.running}
