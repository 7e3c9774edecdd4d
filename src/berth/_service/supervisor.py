"""The supervisor: keep the node's assigned workers running, as Storm's supervisor keeps slots.

Desired state (assignments) is reconciled with what the engine runs, in one loop thread: launch
what is missing, stop what is no longer assigned, replace what changed (the container's
``berth.spec`` label says what it was launched from), restart what exited with exponential
backoff. Every state change of a worker is one JSON line in ``<state_dir>/events.jsonl``.

The engine, not the supervisor's memory, says what runs: after a restart (even SIGKILL) the
supervisor adopts running workers instead of relaunching them, and an exit that happened while
it was down is reported once by ``Node.recover`` and leads to exactly one restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .._core.spec import WorkerSpec, spec_digest
from .._core.timefmt import seconds_between
from .._exceptions import BerthError, WorkerNotFound
from .._node.node import Node
from .._runtimes.base import ExitRecord, WorkerState, WorkerStatus
from .assignments import Assignments, Rejection, load_assignments, signature

log = logging.getLogger("berth.supervisor")


class State(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    BACKOFF = "backoff"
    CRASH_LOOPING = "crash-looping"
    FAILED = "failed"
    """The launch itself failed (e.g. image missing); retried with backoff like an exit."""
    STOPPING = "stopping"
    STOPPED = "stopped"


WAITING = (State.BACKOFF, State.CRASH_LOOPING, State.FAILED)


@dataclass
class WorkerRecord:
    worker_id: str
    spec: WorkerSpec
    state: State = State.PENDING
    container_id: str | None = None
    restarts: int = 0
    failures: int = 0
    """Consecutive failed runs; reset by a healthy one."""
    next_start: float = 0.0
    last_exit: ExitRecord | None = None
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    handled_exit: str | None = None
    """Container id whose exit was already turned into a restart decision."""

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "state": self.state.value,
            "container_id": self.container_id,
            "restarts": self.restarts,
            "failures": self.failures,
            "next_start_in_s": round(max(0.0, self.next_start - now), 3) if self.state in WAITING else None,
            "last_exit": self.last_exit.to_dict() if self.last_exit else None,
            "last_error": self.last_error,
            "since": self.since,
            "spec": self.spec.model_dump(mode="json"),
        }


class Supervisor:
    """Reconciles assignments with the workers the node runs. Start it, feed it, stop it."""

    def __init__(self, node: Node, assignments_path: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.config = node.config
        self.settings = node.config.supervisor
        self.assignments_path = assignments_path
        self._clock = clock
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._desired: dict[str, WorkerSpec] = {}
        self._sources: dict[str, str] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._exits: list[ExitRecord] = []
        self._stopping: set[str] = set()
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self.rejected: list[Rejection] = []
        self._thread: threading.Thread | None = None
        self._quit = False
        self._events_path = Path(self.config.state_dir, "events.jsonl")
        self.listeners: list[Callable[[str, Mapping[str, Any]], None]] = []
        """Called with (kind, data) for launches, exits, restarts: the metrics hook in here."""
        node.set_default_callback(self._on_exit)

    # -- desired state ----------------------------------------------------------------------

    def set_assignments(self, new: Assignments) -> list[Rejection]:
        """Replace the desired state. Rejected entries keep their worker's previous spec."""
        rejected = list(new.rejected)
        accepted: dict[str, WorkerSpec] = {}
        sources: dict[str, str] = {}
        for wid, spec in new.specs.items():
            try:
                self.node.plan(spec)  # validated like a launch request: image, user, mounts, cores
            except BerthError as exc:
                rejected.append(Rejection(new.sources.get(wid, "?"), None, wid, exc.field, exc.reason))
                continue
            accepted[wid] = spec
            sources[wid] = new.sources.get(wid, "?")
        with self._lock:
            keep_sources = new.broken_sources
            keep_ids = {r.worker_id for r in rejected if r.worker_id}
            for wid, spec in self._desired.items():
                if wid not in accepted and (self._sources.get(wid) in keep_sources or wid in keep_ids):
                    accepted[wid] = spec
                    sources[wid] = self._sources[wid]
            self._desired, self._sources = accepted, sources
            self.rejected = rejected
            self._wake.notify_all()
        for r in rejected:
            self._event(r.worker_id or "-", None, None, "assignment rejected", rejection=r.to_dict())
        return rejected

    def reload(self) -> list[Rejection]:
        assert self.assignments_path is not None
        self._signature = signature(self.assignments_path)
        return self.set_assignments(load_assignments(self.assignments_path))

    def desired(self) -> dict[str, WorkerSpec]:
        with self._lock:
            return dict(self._desired)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt what runs (and report what exited meanwhile), then start reconciling."""
        if self.assignments_path is not None:
            self.reload()
        report = self.node.recover()
        for wid in report.adopted:
            self._event(wid, None, State.RUNNING, "adopted after restart")
        for wid in report.removed:
            self._event(wid, None, None, "removed half-made container")
        self._thread = threading.Thread(target=self._loop, name="berth-supervisor", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = False) -> None:
        """Stop reconciling. Workers keep running unless ``drain`` (upgrade-safe by default)."""
        with self._lock:
            self._quit = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(30.0, self.settings.grace_s * 2))
        if drain:
            for w in self.node.ps():
                self._stop_worker(w.worker_id, "drain")
        self.node.close()

    def kill(self, worker_id: str, grace_s: float | None = None) -> None:
        """Stop a worker now; still assigned, it is started again (an operator's restart)."""
        with self._lock:
            rec = self._workers.get(worker_id)
        if rec is None:
            raise WorkerNotFound(worker_id)
        self.node.kill(worker_id, self.settings.grace_s if grace_s is None else grace_s)
        self.poke()

    def poke(self) -> None:
        with self._lock:
            self._wake.notify_all()

    # -- status -----------------------------------------------------------------------------

    def statuses(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._lock:
            return [r.to_dict(now) for r in sorted(self._workers.values(), key=lambda r: r.worker_id)]

    def status(self, worker_id: str) -> dict[str, Any]:
        with self._lock:
            rec = self._workers.get(worker_id)
            if rec is None:
                raise WorkerNotFound(worker_id)
            return rec.to_dict(self._clock())

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {s.value: 0 for s in State}
            for r in self._workers.values():
                out[r.state.value] += 1
            return out

    # -- the loop ---------------------------------------------------------------------------

    def _on_exit(self, rec: ExitRecord) -> None:
        with self._lock:
            self._exits.append(rec)
            self._wake.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._quit:
                    return
            try:
                self._tick()
            except BerthError as exc:
                log.warning("reconcile failed: %s", exc)
            except Exception:
                log.exception("reconcile crashed; retrying")
            with self._lock:
                if self._quit:
                    return
                if not self._exits:
                    self._wake.wait(timeout=self._next_wait())

    def _next_wait(self) -> float:
        now = self._clock()
        wait = min(self.settings.resync_s, 1.0 if self.assignments_path else self.settings.resync_s)
        for r in self._workers.values():
            if r.state in WAITING:
                wait = min(wait, max(0.0, r.next_start - now))
        return wait

    def _tick(self) -> None:
        if self.assignments_path is not None and signature(self.assignments_path) != self._signature:
            self.reload()
        with self._lock:
            exits, self._exits = self._exits, []
        for rec in exits:
            self._handle_exit(rec)
        actual = {w.worker_id: w for w in self.node.ps()}
        desired = self.desired()
        for wid, spec in desired.items():
            self._reconcile_one(wid, spec, actual.get(wid))
        for wid in set(actual) - set(desired):
            self._stop_worker(wid, "no longer assigned")
        with self._lock:
            for wid in [w for w, r in self._workers.items() if w not in desired and r.state == State.STOPPED]:
                del self._workers[wid]

    def _record(self, wid: str, spec: WorkerSpec) -> WorkerRecord:
        with self._lock:
            rec = self._workers.get(wid)
            if rec is None:
                rec = self._workers[wid] = WorkerRecord(wid, spec)
            return rec

    def _reconcile_one(self, wid: str, spec: WorkerSpec, actual: WorkerState | None) -> None:
        rec = self._record(wid, spec)
        digest = spec_digest(spec)
        # The engine's listing can still say "running" just after the die event was delivered:
        # a container whose exit we already handled is not running, whatever the listing says.
        if actual is not None and actual.running and actual.container_id != rec.handled_exit:
            if actual.spec_digest != digest:
                self._set(rec, State.STOPPING, "assignment changed: replacing")
                self._stop_worker(wid, "replaced", record=False)
                rec.spec, rec.failures = spec, 0
                self._launch(rec, "replacement")
                return
            rec.spec, rec.container_id = spec, actual.container_id
            if rec.state != State.RUNNING:
                self._set(rec, State.RUNNING, "running")
            return
        if actual is not None and actual.container_id != rec.handled_exit and actual.state == WorkerStatus.EXITED:
            # An exit the watcher did not hand us (e.g. reported before a crash of berth).
            rec_exit = self.node.exit_record(wid)
            if rec_exit is not None:
                self._handle_exit(rec_exit)
        if rec.state in WAITING and self._clock() < rec.next_start:
            return
        if actual is not None:
            self.node.cleanup(wid)  # the old container's name must be free for the new one
        rec.spec = spec
        self._launch(rec, "restart" if rec.state in (*WAITING, State.EXITED) else "assigned")

    def _launch(self, rec: WorkerRecord, why: str) -> None:
        restart = why in ("restart",)
        self._set(rec, State.STARTING, why)
        t0 = time.perf_counter()
        try:
            handle = self.node.launch(rec.spec)
        except BerthError as exc:
            rec.last_error = str(exc)
            rec.failures += 1
            delay = self._delay(rec.failures)
            rec.next_start = self._clock() + delay
            self._notify("launch_failed", {"worker_id": rec.worker_id, "error": str(exc)})
            self._set(rec, State.FAILED, f"launch failed: {exc}", retry_in_s=round(delay, 3))
            return
        rec.container_id = handle.container_id
        rec.last_error = None
        if restart:
            rec.restarts += 1
            self._notify("restart", {"worker_id": rec.worker_id})
        self._notify("launch", {"worker_id": rec.worker_id, "seconds": time.perf_counter() - t0})
        self._set(rec, State.RUNNING, "started", container_id=handle.container_id)

    def _handle_exit(self, ex: ExitRecord) -> None:
        with self._lock:
            rec = self._workers.get(ex.worker_id)
            desired = ex.worker_id in self._desired
            stopping = ex.worker_id in self._stopping
        self._notify("exit", {"worker_id": ex.worker_id, "exit_code": ex.exit_code, "oom_killed": ex.oom_killed})
        if rec is None or not desired or stopping or rec.handled_exit == ex.container_id:
            return
        if rec.container_id not in (None, ex.container_id):
            return  # an older container of this worker
        rec.handled_exit = ex.container_id
        rec.last_exit = ex
        ran = seconds_between(ex.started_at, ex.finished_at)
        healthy = ex.exit_code == 0 and ran is not None and ran >= self.settings.healthy_after_s
        rec.failures = 0 if healthy else rec.failures + 1
        delay = 0.0 if healthy else self._delay(rec.failures)
        rec.next_start = self._clock() + delay
        how = f"signal {ex.signal_name}" if ex.signal else f"exit code {ex.exit_code}"
        info = {"exit_code": ex.exit_code, "signal": ex.signal, "oom_killed": ex.oom_killed,
                "restart_in_s": round(delay, 3), "failures": rec.failures}
        if rec.failures >= self.settings.crashloop_after:
            self._set(rec, State.CRASH_LOOPING, f"exited ({how}); crash-looping", **info)
        elif delay > 0:
            self._set(rec, State.BACKOFF, f"exited ({how})", **info)
        else:
            self._set(rec, State.EXITED, f"exited ({how})", **info)

    def _delay(self, failures: int) -> float:
        s = self.settings
        if failures >= s.crashloop_after:
            return s.backoff_cap_s
        return float(min(s.backoff_base_s * (2 ** max(0, failures - 1)), s.backoff_cap_s))

    def _stop_worker(self, wid: str, why: str, record: bool = True) -> None:
        with self._lock:
            self._stopping.add(wid)
            rec = self._workers.get(wid)
        try:
            if rec is not None and record:
                self._set(rec, State.STOPPING, why)
            with contextlib.suppress(WorkerNotFound):
                self.node.kill(wid, self.settings.grace_s)
            self.node.cleanup(wid)
            if rec is not None and record:
                self._set(rec, State.STOPPED, "stopped and removed")
            elif rec is None:
                self._event(wid, None, State.STOPPED, f"{why}: stopped and removed")
        finally:
            with self._lock:
                self._stopping.discard(wid)

    # -- events -----------------------------------------------------------------------------

    def _set(self, rec: WorkerRecord, state: State, reason: str, **extra: Any) -> None:
        # Journal first, then change, then tell: whoever sees the new state finds its line written.
        line = self._journal(rec.worker_id, rec.state, state, reason, **extra)
        rec.state = state
        rec.since = time.time()
        self._notify("transition", line)

    def _event(self, wid: str, old: State | None, new: State | None, reason: str, **extra: Any) -> None:
        self._notify("transition", self._journal(wid, old, new, reason, **extra))

    def _journal(self, wid: str, old: State | None, new: State | None, reason: str,
                 **extra: Any) -> dict[str, Any]:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1e6):06d}Z",
                "worker_id": wid, "from": old.value if old else None, "to": new.value if new else None,
                "reason": reason, **extra}
        log.info("%s: %s -> %s (%s)", wid, line["from"], line["to"], reason)
        try:
            self._events_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._events_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        except OSError as exc:
            log.error("cannot write %s: %s", self._events_path, exc)
        return line

    def _notify(self, kind: str, data: Mapping[str, Any]) -> None:
        for fn in self.listeners:
            try:
                fn(kind, data)
            except Exception:
                log.exception("listener failed")

