"""What the supervisor does to one worker (launch, stop, replace, kill), in two small pools.

One action per worker at a time (the slot's ``busy``); launches never queue behind stops that wait
out their grace period. Every action is guarded: one worker's failure (its directory cannot be
removed, its launch raises, the engine errs for that one id) is reported on that worker (phase,
last_error, an event line, a WARNING) and retried later, and the others are served on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from typing import Any

from .._core.plan import Plan
from .._exceptions import BerthError, WorkerNotFound
from .._node.node import Node
from .._runtimes.base import WorkerState
from .bus import Launched, LaunchFailed
from .decisions import backoff_delay, decide_launch_error
from .phase import Phase
from .slot import Entry, WorkerSlot
from .slots import SlotTable

log = logging.getLogger("berth.supervisor")


class Actions:
    def __init__(self, table: SlotTable, node: Node) -> None:
        self.table, self.node = table, node
        self.settings = node.config.supervisor
        self._launches = ThreadPoolExecutor(max_workers=self.settings.parallel, thread_name_prefix="berth-launch")
        self._stops = ThreadPoolExecutor(max_workers=self.settings.parallel_stops, thread_name_prefix="berth-stop")
        self._closed = False

    def submit(self, slot: WorkerSlot, what: str, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn`` for the slot in a pool, unless an action is in flight for it already."""
        with self.table.lock:
            if slot.busy is not None or self._closed:
                return False
            slot.busy = what
        try:
            (self._launches if what == "launch" else self._stops).submit(self._run, slot, what, fn, *args)
        except RuntimeError:  # the pool is shut down: the supervisor is stopping
            with self.table.lock:
                slot.busy = None
            return False
        return True

    def _run(self, slot: WorkerSlot, what: str, fn: Callable[..., None], *args: Any) -> None:
        t = self.table
        try:
            self.guard(slot.worker_id, what, fn, *args)
        finally:
            with t.lock:
                slot.busy = None
                t.exits += slot.held  # exits that came meanwhile: the loop's now
                slot.held = []
                t.actions += 1
                slot.touched = t.actions
                t.wake.notify_all()

    def guard(self, worker_id: str, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # one worker's failure never stops the others
            self.failed(worker_id, what, exc)

    def failed(self, worker_id: str, what: str, exc: Exception) -> None:
        t = self.table
        reason = f"{what} failed: {exc if isinstance(exc, BerthError) else f'{type(exc).__name__}: {exc}'}"
        assigned = t.get(worker_id)
        if assigned is not None and assigned.entry is not None:
            delay = backoff_delay(assigned.failures + 1, self.settings)
            t.change(assigned, reason, partial(assigned.failed, reason, t.clock() + delay), logging.WARNING,
                     retry_in_s=round(delay, 3))
            t.persist()
            return
        slot = t.slot(worker_id)  # a worker berth is removing: its removal is tried again after a while
        with t.lock:
            slot.stop_failures += 1
            slot.stop_retry_at = t.clock() + backoff_delay(slot.stop_failures, self.settings)
        if slot.phase is not None:
            t.change(slot, reason, partial(slot.failed, reason, None), logging.WARNING)
        else:
            t.note(worker_id, None, reason, logging.WARNING)

    # -- launches ------------------------------------------------------------------------------

    def plan_of(self, slot: WorkerSlot) -> Plan:
        """The plan of the slot's spec: the one its assignment was validated with, or one made now
        and kept with the assignment (after a restart of berth the plans are made again)."""
        with self.table.lock:
            entry, spec = slot.entry, slot.spec
        assert spec is not None
        if entry is not None and entry.plan is not None and entry.spec == spec:
            return entry.plan
        plan = self.node.plan(spec)
        self._keep(slot, entry, plan)
        return plan

    def _keep(self, slot: WorkerSlot, entry: Entry | None, plan: Plan) -> None:
        with self.table.lock:
            if entry is not None and slot.entry is entry and entry.spec == slot.spec:
                slot.entry = dataclasses.replace(entry, plan=plan)

    def launch(self, slot: WorkerSlot, why: str) -> None:
        t, wid = self.table, slot.worker_id
        try:
            there: WorkerState | None = self.node.inspect(wid)
        except WorkerNotFound:
            there = None
        if there is not None:
            if there.running:
                return  # launched meanwhile (or adopted): the next pass looks at it
            self.node.cleanup(wid)  # the ended container's name must be free for the new one
        t.change(slot, why, lambda: slot.transition(Phase.STARTING))
        t0 = time.perf_counter()
        with t.lock:  # ended containers of assigned workers keep their places until they restart
            held = {s.worker_id for s in t.assigned() if s is not slot}
            entry, spec = slot.entry, slot.spec
        assert spec is not None
        try:
            handle = self.node.launch(spec, held=held)
        except BerthError as exc:
            self.refused(slot, exc)
            return
        self._keep(slot, entry, handle.plan)
        restart = why == "restart"
        t.bus.publish(Launched(wid, time.perf_counter() - t0, restart))
        t.change(slot, "started", lambda: slot.started(handle.container_id, t.version, restart),
                 container_id=handle.container_id)
        t.persist()

    def refused(self, slot: WorkerSlot, exc: BerthError) -> None:
        """A launch refused (``decide_launch_error``): waiting for capacity is no failure."""
        t = self.table
        d = decide_launch_error(exc, slot.failures, self.settings)
        if d.phase != Phase.NO_CAPACITY:
            t.bus.publish(LaunchFailed(slot.worker_id, str(exc)))
        facts: dict[str, Any] = {"field": exc.field} if d.delay is None else {"retry_in_s": round(d.delay, 3)}
        t.change(slot, d.reason, lambda: slot.refused(exc, d, t.clock()), logging.WARNING, **facts)
        t.persist()

    # -- stops ---------------------------------------------------------------------------------

    def stop(self, slot: WorkerSlot, container_id: str | None, why: str, grace_s: float) -> None:
        """Stop (with the grace period) and remove a worker no longer assigned, or drained."""
        t = self.table
        with t.lock:
            tracked = slot.phase is not None
            if container_id:
                slot.plan_stop(container_id)
        t.persist()  # a crash of berth from here on must not turn this stop into a failure
        if tracked:
            t.change(slot, why, lambda: slot.transition(Phase.STOPPING))
        with contextlib.suppress(WorkerNotFound):
            self.node.kill(slot.worker_id, grace_s)
        self.node.cleanup(slot.worker_id)
        with t.lock:
            slot.stop_retry_at, slot.stop_failures = None, 0
        if tracked:
            t.change(slot, "stopped and removed", lambda: slot.transition(Phase.STOPPED))
        else:
            t.note(slot.worker_id, Phase.STOPPED, f"{why}: stopped and removed")

    def replace(self, slot: WorkerSlot, entry: Entry, old: str) -> None:
        """Stop the container of an earlier assignment, then launch the new one."""
        t = self.table
        with t.lock:
            slot.plan_stop(old)
        t.persist()
        t.change(slot, "assignment changed: replacing", lambda: slot.transition(Phase.STOPPING))
        with contextlib.suppress(WorkerNotFound):
            self.node.kill(slot.worker_id, self.settings.grace_s)
        self.node.cleanup(slot.worker_id)
        with t.lock:
            slot.spec, slot.failures = entry.spec, 0
        self.launch(slot, "replacement")

    def stalled(self, slot: WorkerSlot) -> None:
        with self.table.lock:
            slot.stalled = slot.container_id
        self.node.force_kill(slot.worker_id)  # its exit is handled as any other: a failure, then a restart

    def kill(self, slot: WorkerSlot, grace_s: float) -> None:
        """An operator's stop; not held back by a launch just finishing (the worker runs already)."""
        self._stops.submit(self.guard, slot.worker_id, "kill", self.node.kill, slot.worker_id, grace_s)

    def drain(self, workers: Sequence[WorkerState], progress: Callable[[int, int], None] | None) -> None:
        t, grace = self.table, self.settings.grace_s
        with ThreadPoolExecutor(self.settings.parallel_stops, thread_name_prefix="berth-drain") as pool:
            futures = [pool.submit(self.guard, w.worker_id, "drain", self.stop, t.slot(w.worker_id), w.container_id,
                                   "drain", grace) for w in workers]
            for done, _ in enumerate(as_completed(futures), 1):
                if progress is not None:
                    progress(done, len(futures))

    def shutdown(self) -> None:
        """No new action; wait for those in flight (a launch half-way is finished, not abandoned)."""
        with self.table.lock:
            self._closed = True
        for pool in (self._launches, self._stops):
            pool.shutdown(wait=True, cancel_futures=True)
