"""The supervisor: keep the node's assigned workers running, as Storm's supervisor keeps slots.

Desired state (assignments, from files, the API or the cluster agent) is reconciled with what
the engine runs (``reconcile``): launch what is missing, stop what is no longer assigned,
replace what changed (the container's ``berth.spec`` label says what it was launched from),
restart what exited with exponential backoff (``decisions``). Every state change of a worker is
one JSON line in ``<state_dir>/events.jsonl``.

The engine, not the supervisor's memory, says what runs: after a restart (even SIGKILL) the
supervisor adopts running workers instead of relaunching them. What the engine cannot say is
persisted (``desired``): the desired state and its version, restart counters and handled exits.
Until the desired state is known nothing is removed. One supervisor per node (``lock``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._core.spec import WorkerSpec, spec_digest
from .._core.trust import untrusted
from .._exceptions import BerthError, PolicyError, StateError, WorkerNotFound
from .._node.node import Node
from .._runtimes.base import ExitRecord, WorkerState
from .assignments import (
    MAX_ASSIGNMENTS_BYTES,
    Assignments,
    Rejection,
    load_assignments,
    one_user_per_topology,
    past_the_maximum,
)
from .desired import Saved
from .lock import SupervisorLock, check_claim
from .phase import WAITING, Assigned, Phase
from .reconcile import Reconciler
from .watch import SourceWatch

log = logging.getLogger("berth.supervisor")

SETTLED = (Phase.REJECTED, Phase.NO_CAPACITY)
"""An assigned worker in these phases has its version applied as far as it can be."""
MAX_DESIRED_BYTES = MAX_ASSIGNMENTS_BYTES
"""What the whole desired state may take as JSON (tenants' PUTs add up; it is saved on every change)."""


class Supervisor(Reconciler):
    """Reconciles assignments with the workers the node runs. Start it, feed it, stop it.

    Feed it either from ``assignments_path`` (a file or a directory, watched) or by calling
    ``set_assignments`` (the HTTP API, the cluster agent). ``clock`` (monotonic, for delays)
    and ``wall`` (epoch seconds, for what is persisted) are injectable for tests.
    """

    def __init__(self, node: Node, assignments_path: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 trust_source: bool = True) -> None:
        """``trust_source`` False reads the assignments without checking who could write them
        (a source the caller vouches for); by default a file others could change is rejected."""
        super().__init__(node, clock, wall)
        self.assignments_path = assignments_path
        self._trust = untrusted if trust_source else None
        self.fed_by = assignments_path
        """Where the desired state comes from when the API may not set it (the assignments file or
        directory; the cluster agent's document): ``PUT /assignments`` is then refused (409)."""
        self.lock = SupervisorLock(self.config.state_dir)
        """Held from ``start`` to ``stop``; the cluster agent runs the supervisor under it."""
        self.state_problem: str | None = None
        """Why the persisted state could not be loaded (then nothing is removed until new
        assignments arrive)."""
        self._source = SourceWatch(assignments_path, self.poke) if assignments_path else None
        self._thread: threading.Thread | None = None
        self._started_at: float | None = None
        node.set_default_callback(self._on_exit)

    # -- desired state ----------------------------------------------------------------------

    def set_assignments(self, new: Assignments, *, version: str | None = None) -> list[Rejection]:
        """Replace the desired state; returns the rejected entries.

        Each entry is validated like a launch request; a rejected one (and every entry of a
        source that could not be read) keeps its worker's previous spec. ``version`` is the
        caller's opaque assignment version: persisted with the desired state and reported by
        ``version``, ``applied_version`` and on each worker. The new state is persisted
        atomically before this returns; from then on workers not in it are removed.
        """
        rejected = list(new.rejected)
        accepted: dict[str, WorkerSpec] = {}
        sources: dict[str, str] = {}
        for wid, spec in new.specs.items():
            try:
                self.node.plan(spec)  # validated like a launch request: image, user, mounts, cores
            except BerthError as exc:
                rejected.append(Rejection(new.sources.get(wid, "?"), new.indexes.get(wid), wid, exc.field, exc.reason))
                continue
            accepted[wid] = spec
            sources[wid] = new.sources.get(wid, "?")
        for r in one_user_per_topology(accepted, sources):
            rejected.append(dataclasses.replace(r, index=new.indexes.get(r.worker_id or "")))
            del accepted[r.worker_id or ""], sources[r.worker_id or ""]
        with self._lock:
            keep_ids = {r.worker_id for r in rejected if r.worker_id}
            for wid, spec in self._desired.items():
                if wid not in accepted and (new.keep_all or self._sources.get(wid) in new.broken_sources
                                            or wid in keep_ids):
                    accepted[wid], sources[wid] = spec, self._sources[wid]
            for wid, why in past_the_maximum(accepted, self._desired, self.settings.max_workers,
                                             MAX_DESIRED_BYTES).items():
                rejected.append(self._too_many(sources.pop(wid), new.indexes.get(wid), wid, why))
                del accepted[wid]
            seen = {(r.source, r.worker_id, r.field, r.reason) for r in self.rejected}
            self._desired, self._sources, self._version = accepted, sources, version
            self._loaded, self.state_problem = True, None
            self.rejected = rejected
            # Assigned again: a worker rejected at launch gets one more try (the operator may have
            # loaded its image meanwhile); it is not retried on its own.
            again = [r for w, r in self._workers.items() if w in accepted and r.phase == Phase.REJECTED]
            self._wake.notify_all()
        for rec in again:
            self._set(rec, Phase.PENDING, "assigned again: one more try")
        for r in rejected:
            if (r.source, r.worker_id, r.field, r.reason) not in seen:  # once, not on every re-read
                self._event(r.worker_id or "-", None, None, f"assignment rejected: {r}", level=logging.WARNING,
                            rejection=r.to_dict())
        self._persist()
        return rejected

    @staticmethod
    def _too_many(source: str, index: int | None, wid: str, why: str) -> Rejection:
        return Rejection(source, index, wid, "workers", f"{why}; the workers already assigned keep their places")

    def reload(self) -> list[Rejection]:
        """Read the assignments file(s) again and apply them."""
        assert self._source is not None and self.assignments_path is not None
        self._source.mark_read()
        return self.set_assignments(load_assignments(self.assignments_path, trust=self._trust))

    def _holds_lock(self) -> bool:
        return self.lock.held

    def _check_source(self) -> None:
        if self._source is not None and self._source.changed():
            self.reload()

    def desired(self) -> dict[str, WorkerSpec]:
        with self._lock:
            return dict(self._desired)

    @property
    def version(self) -> str | None:
        """The assignment version of the desired state (None when not given)."""
        return self._version

    @property
    def loaded(self) -> bool:
        """The desired state is known; until it is, no worker is removed."""
        return self._loaded

    def applied_version(self) -> str | None:
        """The desired version once every assigned worker has been launched (or adopted) from
        its current spec, rejected, or waits for capacity, and no other worker is left (none being
        stopped, none in the last listing); None while replacements, launches or removals are on their way."""
        with self._lock:
            for wid in self._desired:
                rec = self._workers.get(wid)
                if rec is None or (rec.phase not in SETTLED and rec.version != self._version) \
                        or rec.phase in (Phase.PENDING, Phase.STARTING, Phase.STOPPING):
                    return None
            ours = {*self._busy, *(x.worker_id for x in self.listed)} - \
                {w for ids in self.conflicts.values() for w in ids}  # another supervisor's are not ours to stop
            if ours - set(self._desired):
                return None
            return self._version

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Take the node's lock, load the persisted state, refuse another supervisor's node,
        adopt what runs (and report what exited meanwhile), then start reconciling. A state dir
        that holds another node's state is refused first (``StateError``), before anything."""
        self.node.bind_state()
        self.lock.acquire(node=self.config.node.name, state_dir=self.config.state_dir)
        self._events.flush()  # lines made before the lock was held (set_assignments before start)
        self._started_at = self._clock()
        try:
            self._restore(keep_desired=self._loaded)  # set before start (the cluster agent does): it wins
            self._persist()
            if self._source is not None:
                self._source.start()
                self.reload()
            listed = self.node.ps()
            check_claim(listed, self.config.state_dir, self.config.node.name)
            with self._lock:  # planned stops of containers that are gone: their exits will never come
                ids = {w.container_id for w in listed}
                self._planned = {c: None for c in self._planned if c in ids}
            report = self.node.recover()
        except BaseException:
            self.lock.release()
            raise
        for wid in report.adopted:  # one line each: the pass that finds it running says nothing more
            rec = self._workers.get(wid)
            if rec is not None and wid in self._desired:
                self._set(rec, Phase.RUNNING, "adopted after restart")
            else:
                self._event(wid, None, Phase.RUNNING, "adopted after restart")
        for wid in report.removed:
            self._event(wid, None, None, "removed half-made container")
        if self._source is not None and self._source.notified:
            self.poll_s = self.settings.resync_s
        self._thread = threading.Thread(target=self._loop, name="berth-supervisor", daemon=True)
        self._thread.start()

    def _restore(self, keep_desired: bool) -> None:
        try:
            saved = self._store.load()
        except StateError as exc:
            if not keep_desired:
                self.state_problem = exc.reason
                log.error("%s; no worker is removed until assignments are set again", exc.reason)
            return
        if saved is None:
            return
        self._apply_saved(saved, keep_desired)

    def _apply_saved(self, saved: Saved, keep_desired: bool) -> None:
        """The saved desired state (unless one was set before ``start``) and each worker's
        counters; a worker whose spec has changed since keeps its history, not its backoff."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            self._planned.update(dict.fromkeys(saved.planned))
            if not keep_desired:
                self._desired, self._sources, self._version = dict(saved.specs), dict(saved.sources), saved.version
                self.rejected, self._loaded = list(saved.rejected), True
                # Saved under a larger max_workers: the maximum holds for what was accepted then, too.
                by_id = dict(sorted(self._desired.items()))
                for wid, why in past_the_maximum(by_id, (), self.settings.max_workers, MAX_DESIRED_BYTES).items():
                    del self._desired[wid]
                    self.rejected.append(self._too_many(self._sources.pop(wid, "?"), None, wid, why))
                    log.warning("%s: assignment rejected: %s", wid, self.rejected[-1].reason)
            for wid, spec in self._desired.items():
                c = saved.counters.get(wid) or {}
                old = saved.specs.get(wid)
                rec = self._workers[wid] = Assigned(wid, spec)
                if old is None:
                    continue
                rec.restarts, rec.failures = int(c.get("restarts") or 0), int(c.get("failures") or 0)
                rec.handled_exit, rec.last_error = c.get("handled_exit"), c.get("last_error")
                rec.version = c.get("version")
                if c.get("last_exit"):
                    rec.last_exit = ExitRecord.from_dict(c["last_exit"])
                if spec_digest(old) != spec_digest(spec):
                    rec.failures = 0
                    continue
                if c.get("phase") == Phase.REJECTED:  # not tried again on its own, restarted or not
                    rec.phase = Phase.REJECTED
                    continue
                phase = Phase(c["phase"]) if c.get("phase") in {p.value for p in WAITING} else None
                if phase is not None:  # the backoff goes on where it was (never longer than the cap)
                    left = float(c.get("next_start_wall") or 0.0) - wall
                    rec.phase, rec.next_start = phase, now + min(max(0.0, left), self.settings.backoff_cap_s)

    def stop(self, drain: bool = False, progress: Callable[[int, int], None] | None = None) -> None:
        """Stop reconciling. Workers keep running unless ``drain`` (upgrade-safe by default);
        ``progress(done, total)`` is called as drained workers are stopped."""
        with self._lock:
            self._quit = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        for pool in (self._launches, self._stops):
            pool.shutdown(wait=True, cancel_futures=True)
        try:
            if drain:
                self._drain(progress)
        finally:
            if self._source is not None:
                self._source.close()
            self.node.close()
            self.lock.release()

    def _drain(self, progress: Callable[[int, int], None] | None) -> None:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        workers = [w for w in self.node.ps() if not any(w.worker_id in v for v in self.conflicts.values())]
        with ThreadPoolExecutor(self.settings.parallel_stops, thread_name_prefix="berth-drain") as pool:
            futures = [pool.submit(self._guard, w.worker_id, "drain", self._stop_action, w.worker_id,
                                   w.container_id, "drain", self.settings.grace_s) for w in workers]
            for done, _ in enumerate(as_completed(futures), 1):
                if progress is not None:
                    progress(done, len(futures))

    def kill(self, worker_id: str, grace_s: float | None = None) -> None:
        """Stop a worker now, without waiting; still assigned, it is started again at once (an
        operator's restart: not a failure, no backoff)."""
        with self._lock:
            rec = self._workers.get(worker_id)
            if rec is None or worker_id not in self._desired:
                raise WorkerNotFound(worker_id)
            busy = self._busy.get(worker_id)
            if rec.phase not in (Phase.RUNNING, Phase.STALLED) or rec.container_id is None \
                    or busy not in (None, "launch"):
                raise PolicyError("worker_id", f"worker {worker_id!r} is {busy or rec.phase.value}, not running")
            rec.operator_stop = rec.container_id
        grace = self.settings.grace_s if grace_s is None else grace_s
        # Not held back by a launch that is just finishing (the worker runs already).
        self._stops.submit(self._guard, worker_id, "kill", self.node.kill, worker_id, grace)

    # -- a worker whose PID 1 is stopped ----------------------------------------------------

    def _check_stalled(self, actual: Mapping[str, WorkerState]) -> None:
        """A process of a worker can ptrace-stop its PID 1 (the engine's init runs as the worker's
        user). The container then runs on, but it can no longer end by itself (its program's exit
        is never reaped, so never reported and never restarted) nor take a SIGTERM: the worker is
        ``stalled``, and after ``stalled_after_s`` it is killed and started again, as a failure.
        Looked at every ``stall_sweep_s`` (one inspect per running worker)."""
        now = self._clock()
        sweep = now >= self._stall_sweep_at
        if sweep:
            self._stall_sweep_at = now + self.stall_sweep_s
        with self._lock:
            recs = [r for w, r in self._workers.items()
                    if w in self._desired and w not in self._busy and r.phase in (Phase.RUNNING, Phase.STALLED)
                    and w in actual and actual[w].container_id == r.container_id]
        for rec in recs:
            if rec.phase == Phase.STALLED and now >= rec.next_start:
                self._submit(rec.worker_id, "stalled", self._stalled_action, rec)
            elif sweep:
                self._guard(rec.worker_id, "stall check", self._look_stalled, rec, now)

    def _look_stalled(self, rec: Assigned, now: float) -> None:
        try:
            stopped = self.node.inspect(rec.worker_id).main_stopped
        except BerthError as exc:  # gone since the listing, or the engine erred: no news of the worker
            log.debug("stall check of %s: %s", rec.worker_id, exc)
            return
        if stopped and rec.phase == Phase.RUNNING:
            why = (f"its PID 1 was stopped from inside the worker (ptrace): it cannot end by itself nor take "
                   f"a SIGTERM; killed and started again in {self.settings.stalled_after_s:g}s unless it resumes")
            self._set(rec, Phase.STALLED, why, level=logging.WARNING,
                      fields={"next_start": now + self.settings.stalled_after_s, "last_error": why})
        elif not stopped and rec.phase == Phase.STALLED:
            self._set(rec, Phase.RUNNING, "its PID 1 runs again", fields={"last_error": None})

    def _stalled_action(self, rec: Assigned) -> None:
        with self._lock:
            rec.stalled = rec.container_id
        self.node.force_kill(rec.worker_id)  # its exit is handled as any other: a failure, then a restart

    def poke(self) -> None:
        with self._lock:
            self._wake.notify_all()

    # -- status -----------------------------------------------------------------------------

    def statuses(self) -> list[dict[str, Any]]:
        now, wall = self._clock(), time.time()
        with self._lock:
            return [self._status(r, now, wall) for r in sorted(self._workers.values(), key=lambda r: r.worker_id)]

    def status(self, worker_id: str) -> dict[str, Any]:
        with self._lock:
            rec = self._workers.get(worker_id)
            if rec is None:
                raise WorkerNotFound(worker_id)
            return self._status(rec, self._clock(), time.time())

    def _status(self, rec: Assigned, now: float, wall: float) -> dict[str, Any]:
        out = rec.to_dict(now, wall)
        out["assignment_version"] = rec.version
        out["busy"] = self._busy.get(rec.worker_id)
        return out

    def rejections(self) -> list[Rejection]:
        """Assignment entries refused when set, assigned workers that cannot launch as given, and
        those waiting for the node's capacity (``retried``)."""
        with self._lock:
            later = [Rejection(self._sources.get(w, "?"), None, w, None, r.last_error or "cannot launch")
                     for w, r in sorted(self._workers.items()) if r.phase == Phase.REJECTED and w in self._desired]
            waiting = [Rejection(self._sources.get(w, "?"), None, w, r.refused,
                                 (r.last_error or "").removeprefix(f"{r.refused}: "), retried=True)
                       for w, r in sorted(self._workers.items()) if r.phase == Phase.NO_CAPACITY and w in self._desired]
            return [*self.rejected, *later, *waiting]

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {p.value: 0 for p in Phase}
            for r in self._workers.values():
                out[r.phase.value] += 1
            return out

    def stale(self) -> bool:
        """No reconcile pass has completed for ``stale_after_s`` (or none yet, that long after start)."""
        last = self.last_pass if self.last_pass is not None else self._started_at
        return last is None or self._clock() - last > self.settings.stale_after_s
