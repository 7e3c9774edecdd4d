"""The reconcile loop and the per-worker actions it hands to a small pool.

One loop thread compares the desired workers with the engine's listing and decides, per worker,
what to do; the doing (launch, stop with its grace period, replace) runs in a bounded pool, one
action per worker at a time, so a slow stop never delays the others. Every action and every
decision is guarded per worker: one worker's failure (its directory cannot be removed, its
launch raises, the engine errors for that one id) is reported on that worker (phase, last_error,
an event line, a WARNING) and the supervisor goes on serving the rest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .._core.spec import WorkerSpec, spec_digest
from .._exceptions import BerthError, WorkerNotFound
from .._node.node import Node
from .._runtimes.base import ExitRecord, WorkerState, WorkerStatus
from .assignments import Rejection
from .bus import Bus, Exited, Forgotten, Launched, LaunchFailed, PassDone, PassFailed, Transition
from .decisions import (
    ExitCause,
    backoff_delay,
    decide_exit,
    decide_launch_error,
    exit_cause,
    next_wait,
    pass_retry_wait,
)
from .desired import DesiredStore, Saved
from .events import EventLog
from .lock import conflicts
from .phase import WAITING, Assigned, Phase
from .room import Room, in_flight

log = logging.getLogger("berth.supervisor")

class Reconciler:
    """The machinery under ``Supervisor``: state, loop, actions, persistence, events."""

    def __init__(self, node: Node, clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.node = node
        self.config = node.config
        self.settings = node.config.supervisor
        self._clock = clock
        self._wall = wall
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._desired: dict[str, WorkerSpec] = {}
        self._sources: dict[str, str] = {}
        self._version: str | None = None
        self._loaded = False
        """Desired state is known (loaded, put or read from a file): only then is anything removed."""
        self._workers: dict[str, Assigned] = {}
        self._exits: list[ExitRecord] = []
        self._busy: dict[str, str] = {}
        """Worker id -> the action in flight for it (at most one per worker)."""
        self._held: dict[str, list[ExitRecord]] = {}
        """Exits of workers with an action in flight: handled once it is over (a launch not yet
        returned has not said which container is the worker's)."""
        self._touched: dict[str, int] = {}
        self._epoch = 0
        self._planned: dict[str, None] = {}
        """Container ids whose exit berth caused (unassigned, replaced, drained): not crashes."""
        self._retry_at: dict[str, tuple[float, int]] = {}
        """Not-assigned worker id -> (when its failed stop is tried again, failures so far)."""
        self.rejected: list[Rejection] = []
        self.conflicts: dict[str, list[str]] = {}
        self._quit = False
        # Two pools: launches never queue behind stops that wait out their grace period.
        self._launches = ThreadPoolExecutor(max_workers=self.settings.parallel, thread_name_prefix="berth-launch")
        self._stops = ThreadPoolExecutor(max_workers=self.settings.parallel_stops, thread_name_prefix="berth-stop")
        self._events = EventLog(self.config.state_dir, gate=lambda: self._holds_lock())
        self._store = DesiredStore(self.config.state_dir)
        self._save_lock = threading.Lock()
        self.listed: list[WorkerState] = []  # the node's workers on the engine, as the last pass listed them
        self.last_pass: float | None = None
        """When the last reconcile pass completed (supervisor clock); /healthz reads it."""
        self._pass_failures = 0
        self.retry_base_s = 0.25
        """The first wait after a failed pass; it doubles up to ``MAX_PASS_RETRY_S``."""
        self.stall_sweep_s = 10.0
        """How often running workers are looked at for a stopped PID 1 (one inspect each)."""
        self._stall_sweep_at = 0.0
        self.poll_s = 1.0
        """How often the assignments source is checked when nothing notifies a change."""
        self.bus = Bus()  # launches, exits, transitions, passes: metrics and the cluster agent listen
        self.subscribe = self.bus.subscribe

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._quit:
                    return
            ok = self._pass_guarded()
            with self._lock:
                if self._quit:
                    return
                if not self._exits:
                    self._wake.wait(timeout=self._next_wait(ok))

    def _pass_guarded(self) -> bool:
        try:
            self._pass()
        except Exception as exc:  # the loop must outlive anything one pass meets
            self._pass_failures += 1
            if self._pass_failures == 1:  # one line per change of state, not one per attempt
                log.warning("reconcile failed (retrying with backoff): %s", exc,
                            exc_info=not isinstance(exc, BerthError))
            self.bus.publish(PassFailed(self._pass_failures))
            return False
        if self._pass_failures:
            log.info("reconcile works again after %d failed attempts", self._pass_failures)
        self._pass_failures = 0
        return True

    def _next_wait(self, ok: bool) -> float:
        if not ok:
            return pass_retry_wait(self.retry_base_s, self._pass_failures)
        return next_wait(self._clock(), min(self.settings.resync_s, self.poll_s), self._workers.values(), self._busy,
                         self._retry_at, self._stall_sweep_at)

    def _holds_lock(self) -> bool:  # the hooks below are the supervisor's (overridden)
        return True

    def _check_source(self) -> None: ...
    def _check_stalled(self, actual: Mapping[str, WorkerState]) -> None: ...

    def _pass(self) -> None:
        self._check_source()
        with self._lock:
            exits, self._exits = self._exits, []
            epoch = self._epoch
            for ex in [x for x in exits if x.worker_id in self._busy]:
                self._held.setdefault(ex.worker_id, []).append(ex)
                exits.remove(ex)
        for ex in exits:
            self._guard(ex.worker_id, "exit handling", self._handle_exit, ex)
        listed = self.node.ps()
        others = self.conflicts = conflicts(listed, self.config.state_dir, self.conflicts)
        actual = {w.worker_id: w for w in listed if not any(w.worker_id in v for v in others.values())}
        self.listed = listed
        with self._lock:
            desired, loaded = dict(self._desired), self._loaded
        for wid in set(self._retry_at) & set(desired):
            self._retry_at.pop(wid, None)  # assigned again: the launch cleans up what is left
        with self._lock:
            flying = in_flight(self._workers, self._busy, listed)
        room = Room(self.node, listed, desired, flying)
        for wid, spec in desired.items():
            self._guard(wid, "reconcile", self._decide, wid, spec, actual.get(wid), epoch, room)
        self._check_stalled(actual)
        now = self._clock()
        if loaded:
            # Not assigned: listed by the engine, or gone from it after a stop that failed half-way
            # (its directories could not be removed): stopped and removed, a failure retried later.
            for wid in sorted((set(actual) | set(self._retry_at)) - set(desired)):
                with self._lock:
                    skip = wid in self._busy or self._touched.get(wid, -1) > epoch
                if not skip and self._retry_at.get(wid, (0.0, 0))[0] <= now:
                    cid = actual[wid].container_id if wid in actual else None
                    self._submit(wid, "stop", self._stop_action, wid, cid, "no longer assigned", self.settings.grace_s)
        with self._lock:  # unassigned, and stopped or never running (rejected, waiting): forgotten
            gone = [w for w, r in self._workers.items() if w not in desired and (r.phase == Phase.STOPPED or (
                w not in actual and w not in self._busy and w not in self._retry_at))]
            for wid in gone:
                del self._workers[wid]
        for wid in gone:
            self.bus.publish(Forgotten(wid))
        self.last_pass = self._clock()
        self.bus.publish(PassDone())

    def _decide(self, wid: str, spec: WorkerSpec, actual: WorkerState | None, epoch: int,
                room: Room | None = None) -> None:
        with self._lock:
            if wid in self._busy or self._touched.get(wid, -1) > epoch:
                return  # an action is in flight, or ended after the listing: next pass
            rec = self._workers.get(wid)
            if rec is None:
                rec = self._workers[wid] = Assigned(wid, spec)
        digest = spec_digest(spec)
        if spec_digest(rec.spec) != digest and rec.phase in (*WAITING, Phase.REJECTED, Phase.NO_CAPACITY):
            # A new assignment applies at once, with a fresh backoff (it may well be the fix).
            self._set(rec, Phase.PENDING, "assignment changed",
                      fields={"spec": spec, "failures": 0, "next_start": self._clock(), "last_error": None,
                              "want": None, "refused": None})
        if rec.phase == Phase.REJECTED:
            return
        # The listing can still say "running" just after the die event was delivered: a
        # container whose exit was handled is not running, whatever the listing says.
        if actual is not None and actual.running and actual.container_id != rec.handled_exit:
            if actual.spec_digest != digest:
                self._submit(wid, "replace", self._replace_action, rec, spec, actual.container_id)
                return
            with self._lock:
                rec.spec, rec.container_id, rec.version = spec, actual.container_id, self._version
            if rec.phase not in (Phase.RUNNING, Phase.STALLED):  # stalled: _check_stalled's to say
                self._set(rec, Phase.RUNNING, "running")
            return
        if actual is not None and actual.container_id != rec.handled_exit and actual.state == WorkerStatus.EXITED:
            ex = self.node.exit_record(wid)  # an exit nobody handed us (e.g. before a crash of berth)
            if ex is not None:
                self._handle_exit(ex)
        if rec.phase in WAITING and self._clock() < rec.next_start:
            return
        rec.spec = spec
        refused = room.take(rec) if room is not None and actual is None else None
        if refused is not None:  # no container, so no place of its own: it waits for room, in order
            if rec.phase != Phase.NO_CAPACITY:
                self._refused(rec, refused)
            return
        why = "restart" if rec.phase in (*WAITING, Phase.EXITED, Phase.RUNNING) else "assigned"
        self._submit(wid, "launch", self._launch_action, rec, why)

    # -- actions, one per worker at a time, in the pool ----------------------------------------

    def _submit(self, wid: str, what: str, fn: Callable[..., None], *args: Any) -> Future[None] | None:
        with self._lock:
            if wid in self._busy or self._quit:
                return None
            self._busy[wid] = what
        try:
            pool = self._launches if what == "launch" else self._stops
            return pool.submit(self._run, wid, what, fn, *args)
        except RuntimeError:  # the pool is shut down: the supervisor is stopping
            with self._lock:
                self._busy.pop(wid, None)
            return None

    def _run(self, wid: str, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._guard(wid, what, fn, *args)
        finally:
            with self._lock:
                self._busy.pop(wid, None)
                self._exits += self._held.pop(wid, [])
                self._epoch += 1
                self._touched[wid] = self._epoch
                self._wake.notify_all()

    def _guard(self, wid: str, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # one worker's failure never stops the others
            self._worker_failed(wid, what, exc)

    def _worker_failed(self, wid: str, what: str, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
        reason = f"{what} failed: {text}"
        with self._lock:
            rec = self._workers.get(wid)
            assigned = wid in self._desired
        if rec is not None and assigned:
            delay = backoff_delay(rec.failures + 1, self.settings)
            self._set(rec, Phase.FAILED, reason, level=logging.WARNING, retry_in_s=round(delay, 3),
                      fields={"last_error": reason, "failures": rec.failures + 1,
                              "next_start": self._clock() + delay})
            self._persist()
        else:  # a worker berth is removing: its stop is retried after a while
            failures = self._retry_at.get(wid, (0.0, 0))[1] + 1
            self._retry_at[wid] = (self._clock() + backoff_delay(failures, self.settings), failures)
            if rec is not None:
                self._set(rec, Phase.FAILED, reason, level=logging.WARNING, fields={"last_error": reason})
            else:
                self._event(wid, None, None, reason, level=logging.WARNING)

    def _launch_action(self, rec: Assigned, why: str) -> None:
        wid = rec.worker_id
        try:
            there: WorkerState | None = self.node.inspect(wid)
        except WorkerNotFound:
            there = None
        if there is not None:
            if there.running:
                return  # launched meanwhile (or adopted): the next pass looks at it
            self.node.cleanup(wid)  # the ended container's name must be free for the new one
        self._set(rec, Phase.STARTING, why)
        t0 = time.perf_counter()
        try:
            with self._lock:  # ended containers of assigned workers keep their places until they restart
                held = {w for w in self._desired if w != wid}
            handle = self.node.launch(rec.spec, held=held)
        except BerthError as exc:
            self._refused(rec, exc)
            return
        restarts = rec.restarts + (why == "restart")
        self.bus.publish(Launched(wid, time.perf_counter() - t0, restart=why == "restart"))
        self._set(rec, Phase.RUNNING, "started", container_id=handle.container_id,
                  fields={"container_id": handle.container_id, "last_error": None, "version": self._version,
                          "restarts": restarts, "want": None, "refused": None})
        self._persist()

    def _refused(self, rec: Assigned, exc: BerthError) -> None:
        """A launch refused (``decide_launch_error``): waiting for capacity is no failure."""
        d = decide_launch_error(exc, rec.failures, self.settings)
        if d.phase != Phase.NO_CAPACITY:
            self.bus.publish(LaunchFailed(rec.worker_id, str(exc)))
        fields: dict[str, Any] = {"last_error": str(exc), "failures": d.failures,
                                  "refused": exc.field if d.phase == Phase.NO_CAPACITY else None}
        extra: dict[str, Any] = {"field": exc.field} if d.delay is None else {"retry_in_s": round(d.delay, 3)}
        if d.delay is not None:
            fields["next_start"] = self._clock() + d.delay
        self._set(rec, d.phase, d.reason, level=logging.WARNING, fields=fields, **extra)
        self._persist()

    def _stop_action(self, wid: str, container_id: str | None, why: str, grace_s: float) -> None:
        with self._lock:
            rec = self._workers.get(wid)
            if container_id:
                self._planned[container_id] = None
        self._persist()  # a crash of berth from here on must not turn this stop into a failure
        if rec is not None:
            self._set(rec, Phase.STOPPING, why)
        with contextlib.suppress(WorkerNotFound):
            self.node.kill(wid, grace_s)
        self.node.cleanup(wid)
        self._retry_at.pop(wid, None)
        if rec is not None:
            self._set(rec, Phase.STOPPED, "stopped and removed")
        else:
            self._event(wid, None, Phase.STOPPED, f"{why}: stopped and removed")
            self.bus.publish(Forgotten(wid))

    def _replace_action(self, rec: Assigned, spec: WorkerSpec, old: str) -> None:
        with self._lock:
            self._planned[old] = None
        self._persist()
        self._set(rec, Phase.STOPPING, "assignment changed: replacing")
        with contextlib.suppress(WorkerNotFound):
            self.node.kill(rec.worker_id, self.settings.grace_s)
        self.node.cleanup(rec.worker_id)
        with self._lock:
            rec.spec, rec.failures = spec, 0
        self._launch_action(rec, "replacement")

    # -- exits -------------------------------------------------------------------------------

    def _on_exit(self, ex: ExitRecord) -> None:
        with self._lock:
            self._exits.append(ex)
            self._wake.notify_all()

    def _handle_exit(self, ex: ExitRecord) -> None:
        with self._lock:
            rec = self._workers.get(ex.worker_id)
            desired = ex.worker_id in self._desired
            planned = ex.container_id in self._planned
            self._planned.pop(ex.container_id, None)
        if rec is None or not desired or planned or rec.container_id not in (None, ex.container_id):
            # not (or no longer) assigned, stopped by berth, or an older container of this worker
            if rec is not None and desired and planned and rec.container_id in (None, ex.container_id):
                with self._lock:  # berth's own stop of this worker: seen, and never taken for a crash later
                    rec.handled_exit, rec.last_exit = ex.container_id, ex
            self.bus.publish(Exited(ex.worker_id, ex, exit_cause(ex, planned or not desired)))
            if planned:
                self._persist()  # the planned stop is over: supervisor.json no longer names it
            return
        if rec.handled_exit == ex.container_id:
            return
        by_operator = rec.operator_stop == ex.container_id
        stalled = rec.stalled == ex.container_id
        d = decide_exit(ex, rec.failures, by_operator, self.settings, stalled=stalled)
        self.bus.publish(Exited(ex.worker_id, ex, d.cause))
        what = "stopped by the operator" if by_operator else \
            "killed: its PID 1 stayed stopped" if stalled else f"exited: {ex.how}"
        if d.phase == Phase.CRASH_LOOPING:
            what += "; crash-looping"
        quiet = d.cause in (ExitCause.STOP, ExitCause.EXIT)
        self._set(rec, d.phase, what, level=logging.INFO if quiet else logging.WARNING,
                  exit_code=ex.exit_code, signal=ex.signal, oom_killed=ex.oom_killed, cause=d.cause,
                  restart_in_s=round(d.delay, 3), failures=d.failures,
                  fields={"handled_exit": ex.container_id, "last_exit": ex, "failures": d.failures,
                          "operator_stop": None, "stalled": None, "next_start": self._clock() + d.delay})
        with self._lock:
            while len(self._planned) > 4096:  # exits that never came (removed while berth was away)
                self._planned.pop(next(iter(self._planned)))
        self._persist()

    # -- persistence and events ---------------------------------------------------------------

    def _snapshot(self) -> Saved:
        now, wall = self._clock(), self._wall()
        with self._lock:
            counters = {w: r.counters(now, wall) for w, r in self._workers.items() if w in self._desired}
            return Saved(specs=dict(self._desired), sources=dict(self._sources), version=self._version,
                         counters=counters, rejected=list(self.rejected), planned=list(self._planned))

    def _persist(self) -> None:
        with self._lock:
            if not self._loaded or not self._holds_lock():
                return  # never overwrite a state we could not read, nor another supervisor's
        with self._save_lock:
            self._store.save(self._snapshot())

    def _set(self, rec: Assigned, phase: Phase, reason: str, level: int = logging.INFO,
             fields: Mapping[str, Any] | None = None, **extra: Any) -> None:
        """Change a worker's phase and ``fields`` at once (a reader never sees half of it).
        Journal first, then change, then tell: whoever sees the new phase finds its line written;
        listeners are told outside the lock (they may call back into the supervisor)."""
        with self._lock:
            old = rec.phase
            line = self._events.write(rec.worker_id, old, phase, reason, level=level, **extra)
            for name, value in (fields or {}).items():
                setattr(rec, name, value)
            rec.phase = phase
            rec.since = time.time()
        self.bus.publish(Transition(rec.worker_id, old, phase, reason, line))

    def _event(self, wid: str, old: Phase | None, new: Phase | None, reason: str, level: int = logging.INFO,
               **extra: Any) -> None:
        self.bus.publish(Transition(wid, old, new, reason, self._events.write(wid, old, new, reason, level=level,
                                                                               **extra)))
