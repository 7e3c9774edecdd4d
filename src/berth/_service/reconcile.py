"""The reconcile loop: compare the desired workers with the engine's listing, decide per worker.

One loop thread; the doing (launch, stop with its grace period, replace) is handed to ``Actions``,
one action per worker at a time, so a slow stop never delays the others. Every decision is
guarded per worker, and a pass that fails as a whole (the engine unreachable) is retried with a
doubling wait, logged once when it starts failing and once when it works again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from .._core.spec import spec_digest
from .._exceptions import BerthError
from .._node.node import Node
from .._runtimes.base import ExitRecord, WorkerState, WorkerStatus
from .actions import Actions
from .bus import Exited, Forgotten, PassDone, PassFailed
from .decisions import ExitCause, decide_exit, exit_cause, pass_retry_wait
from .lock import conflicts
from .phase import WAITING, Phase
from .room import Room, in_flight
from .slot import WorkerSlot
from .slots import SlotTable, next_wait

log = logging.getLogger("berth.supervisor")


class Reconciler:
    def __init__(self, table: SlotTable, node: Node, before_pass: Callable[[], None]) -> None:
        """``before_pass`` runs at the start of every pass (the supervisor re-reads its
        assignment files there when they changed)."""
        self.table, self.node = table, node
        self.settings = node.config.supervisor
        self.actions = Actions(table, node)
        self.before_pass = before_pass
        self.listed: list[WorkerState] = []
        """The node's workers on the engine, as the last pass listed them."""
        self.conflicts: dict[str, list[str]] = {}
        """Another supervisor's state dir -> its workers found on this engine (left alone)."""
        self.last_pass: float | None = None
        """When the last pass completed (supervisor clock); /healthz reads it."""
        self.pass_failures = 0
        """Failed passes in a row."""
        self.retry_base_s = 0.25
        """The first wait after a failed pass; it doubles up to ``decisions.MAX_PASS_RETRY_S``."""
        self.stall_sweep_s = 10.0
        """How often running workers are looked at for a stopped PID 1 (one inspect each)."""
        self.poll_s = 1.0
        """How often the assignments source is checked when nothing notifies a change."""
        self._stall_sweep_at = 0.0
        self._quit = False
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="berth-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop, then wait for the actions in flight."""
        with self.table.lock:
            self._quit = True
            self.table.wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        self.actions.shutdown()

    def poke(self) -> None:
        with self.table.lock:
            self.table.wake.notify_all()

    def exited(self, ex: ExitRecord) -> None:
        """The node's exit callback: handled by the next pass."""
        with self.table.lock:
            self.table.exits.append(ex)
            self.table.wake.notify_all()

    def _loop(self) -> None:
        t = self.table
        while True:
            with t.lock:
                if self._quit:
                    return
            ok = self._pass_guarded()
            with t.lock:
                if self._quit:
                    return
                if not t.exits:
                    t.wake.wait(timeout=self.next_wait(ok))

    def _pass_guarded(self) -> bool:
        try:
            self.run_pass()
        except Exception as exc:  # the loop must outlive anything one pass meets
            self.pass_failures += 1
            if self.pass_failures == 1:  # one line per change of state, not one per attempt
                log.warning("reconcile failed (retrying with backoff): %s", exc,
                            exc_info=not isinstance(exc, BerthError))
            self.table.bus.publish(PassFailed(self.pass_failures))
            return False
        if self.pass_failures:
            log.info("reconcile works again after %d failed attempts", self.pass_failures)
        self.pass_failures = 0
        return True

    def next_wait(self, ok: bool) -> float:
        """How long the loop sleeps after a pass (``ok``: it completed) unless woken."""
        if not ok:
            return pass_retry_wait(self.retry_base_s, self.pass_failures)
        return next_wait(self.table.clock(), min(self.settings.resync_s, self.poll_s), self.table.all(),
                         self._stall_sweep_at)

    # -- one pass ------------------------------------------------------------------------------

    def run_pass(self) -> None:
        t, guard = self.table, self.actions.guard
        self.before_pass()
        with t.lock:
            pending, t.exits, epoch = t.exits, [], t.actions
            exits = []
            for ex in pending:
                slot = t.get(ex.worker_id)
                if slot is not None and slot.busy is not None:
                    slot.held.append(ex)  # its launch may not have said yet which container is its own
                else:
                    exits.append(ex)
        for ex in exits:
            guard(ex.worker_id, "exit handling", self.handle_exit, ex)
        listed = self.node.ps()
        others = self.conflicts = conflicts(listed, self.node.config.state_dir, self.conflicts)
        actual = {w.worker_id: w for w in listed if not any(w.worker_id in v for v in others.values())}
        self.listed = listed
        with t.lock:
            loaded, assigned = t.loaded, t.assigned()
            flying = in_flight(t.all(), listed)
        room = Room(self.node, listed, {s.worker_id for s in assigned}, flying, self.actions.plan_of)
        for slot in assigned:
            guard(slot.worker_id, "reconcile", self._decide, slot, actual.get(slot.worker_id), epoch, room)
        self._check_stalled(actual)
        if loaded:
            self._remove_unassigned(actual, epoch)
        with t.lock:  # unassigned, and stopped or never running (rejected, waiting): forgotten
            gone = [s for s in t.all() if s.entry is None and (s.phase == Phase.STOPPED or (
                s.worker_id not in actual and s.busy is None and s.stop_retry_at is None))]
            t.forget(gone)
        for slot in gone:
            t.bus.publish(Forgotten(slot.worker_id))
        self.last_pass = t.clock()
        t.bus.publish(PassDone())

    def _remove_unassigned(self, actual: Mapping[str, WorkerState], epoch: int) -> None:
        """Listed by the engine, or gone from it after a removal that failed half-way (its
        directories could not be removed): stopped and removed, a failure retried later."""
        t, now = self.table, self.table.clock()
        retried = {s.worker_id for s in t.all() if s.stop_retry_at is not None}
        for wid in sorted(set(actual) | retried):
            slot = t.slot(wid)
            with t.lock:
                skip = slot.entry is not None or slot.busy is not None or slot.touched > epoch
            if not skip and (slot.stop_retry_at or 0.0) <= now:
                cid = actual[wid].container_id if wid in actual else None
                self.actions.submit(slot, "stop", self.actions.stop, slot, cid, "no longer assigned",
                                    self.settings.grace_s)

    def _decide(self, slot: WorkerSlot, actual: WorkerState | None, epoch: int, room: Room) -> None:
        t = self.table
        with t.lock:
            entry = slot.entry
            if entry is None or slot.busy is not None or slot.touched > epoch:
                return  # unassigned meanwhile, an action in flight, or one ended after the listing
        spec, digest = entry.spec, spec_digest(entry.spec)
        assert slot.spec is not None
        if spec_digest(slot.spec) != digest and slot.phase in (*WAITING, Phase.REJECTED, Phase.NO_CAPACITY):
            # A new assignment applies at once, with a fresh backoff (it may well be the fix).
            t.change(slot, "assignment changed", lambda: slot.reassigned(t.clock()))
        if slot.phase == Phase.REJECTED:
            return
        # The listing can still say "running" just after the die event was delivered: a
        # container whose exit was handled is not running, whatever the listing says.
        if actual is not None and actual.running and actual.container_id != slot.handled_exit:
            if actual.spec_digest != digest:
                self.actions.submit(slot, "replace", self.actions.replace, slot, entry, actual.container_id)
                return
            with t.lock:
                slot.spec, slot.container_id, slot.version = spec, actual.container_id, t.version
            if slot.phase not in (Phase.RUNNING, Phase.STALLED):  # stalled: _check_stalled's to say
                t.change(slot, "running", lambda: slot.transition(Phase.RUNNING))
            return
        if actual is not None and actual.container_id != slot.handled_exit and actual.state == WorkerStatus.EXITED:
            ex = self.node.exit_record(slot.worker_id)  # an exit nobody handed us (e.g. before a crash of berth)
            if ex is not None:
                self.handle_exit(ex)
        if not slot.due(t.clock()):
            return
        with t.lock:
            slot.spec = spec
        refused = room.take(slot) if actual is None else None
        if refused is not None:  # no container, so no place of its own: it waits for room, in order
            if slot.phase != Phase.NO_CAPACITY:
                self.actions.refused(slot, refused)
            return
        why = "restart" if slot.phase in (*WAITING, Phase.EXITED, Phase.RUNNING) else "assigned"
        self.actions.submit(slot, "launch", self.actions.launch, slot, why)

    # -- exits ---------------------------------------------------------------------------------

    def handle_exit(self, ex: ExitRecord) -> None:
        """One exit, decided and moved to under the lock in one step: the exit event and a pass's
        listing may hand the same exit over at once (two threads), and it counts once: one failure
        towards the backoff, one Exited, and never a restart before its backoff is set."""
        t, cid = self.table, ex.container_id
        with t.lock:
            slot = t.get(ex.worker_id)
            planned = t.unplan(slot, cid)
            told_twice = slot is not None and slot.handled_exit == cid  # the event and a listing
            assigned = slot is not None and slot.entry is not None
            ours = slot is not None and slot.container_id in (None, cid)
            if told_twice:
                moved = None  # maybe after its successor started: said once already
            elif slot is None or not assigned or planned or not ours:
                if slot is not None and assigned and planned and ours:
                    slot.handled_exit, slot.last_exit = cid, ex  # berth's own stop: never taken for a crash later
                moved = None
            else:
                slot.handled_exit = cid  # claimed before anything else may look
                by_operator, stalled = slot.operator_stop == cid, slot.stalled == cid
                d = decide_exit(ex, slot.failures, by_operator, self.settings, stalled=stalled)
                what = "stopped by the operator" if by_operator else \
                    "killed: its PID 1 stayed stopped" if stalled else f"exited: {ex.how}"
                if d.phase == Phase.CRASH_LOOPING:
                    what += "; crash-looping"
                quiet = d.cause in (ExitCause.STOP, ExitCause.EXIT)
                moved = t.move(slot, what, lambda: slot.ended(ex, d, t.clock()),
                               logging.INFO if quiet else logging.WARNING, exit_code=ex.exit_code,
                               signal=ex.signal, oom_killed=ex.oom_killed, cause=d.cause,
                               restart_in_s=round(d.delay, 3), failures=d.failures)
        if moved is None:
            # not (or no longer) assigned, stopped by berth, or an older container of this worker
            if not told_twice:
                t.bus.publish(Exited(ex.worker_id, ex, exit_cause(ex, planned or not assigned)))
            if planned:
                t.persist()  # the planned stop is over: supervisor.json no longer names it
            return
        t.bus.publish(Exited(ex.worker_id, ex, d.cause))
        t.bus.publish(moved)  # after the lock: listeners may call back
        t.persist()

    # -- a worker whose PID 1 is stopped -------------------------------------------------------

    def _check_stalled(self, actual: Mapping[str, WorkerState]) -> None:
        """A process of a worker can ptrace-stop its PID 1 (the engine's init runs as the worker's
        user). The container then runs on, but it can no longer end by itself (its program's exit
        is never reaped, so never reported and never restarted) nor take a SIGTERM: the worker is
        ``stalled``, and after ``stalled_after_s`` it is killed and started again, as a failure.
        Looked at every ``stall_sweep_s`` (one inspect per running worker)."""
        t, now = self.table, self.table.clock()
        sweep = now >= self._stall_sweep_at
        if sweep:
            self._stall_sweep_at = now + self.stall_sweep_s
        with t.lock:
            slots = [s for s in t.assigned() if s.busy is None and s.phase in (Phase.RUNNING, Phase.STALLED)
                     and s.worker_id in actual and actual[s.worker_id].container_id == s.container_id]
        for slot in slots:
            if slot.phase == Phase.STALLED and now >= slot.next_start:
                self.actions.submit(slot, "stalled", self.actions.stalled, slot)
            elif sweep:
                self.actions.guard(slot.worker_id, "stall check", self._look_stalled, slot, now)

    def _look_stalled(self, slot: WorkerSlot, now: float) -> None:
        t = self.table
        try:
            stopped = self.node.inspect(slot.worker_id).main_stopped
        except BerthError as exc:  # gone since the listing, or the engine erred: no news of the worker
            log.debug("stall check of %s: %s", slot.worker_id, exc)
            return
        if stopped and slot.phase == Phase.RUNNING:
            after = self.settings.stalled_after_s
            why = (f"its PID 1 was stopped from inside the worker (ptrace): it cannot end by itself nor take "
                   f"a SIGTERM; killed and started again in {after:g}s unless it resumes")
            t.change(slot, why, lambda: slot.stall(why, now + after), logging.WARNING)
        elif not stopped and slot.phase == Phase.STALLED:
            t.change(slot, "its PID 1 runs again", slot.resumed)
