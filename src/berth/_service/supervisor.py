"""The supervisor: keep the node's assigned workers running, as Storm's supervisor keeps slots.

Desired state (assignments, from files, the API or the cluster agent) is reconciled with what
the engine runs (``reconcile``): launch what is missing, stop what is no longer assigned,
replace what changed (the container's ``berth.spec`` label says what it was launched from),
restart what exited with exponential backoff (``decisions``). Each worker is one ``WorkerSlot``
(``slot``) whose phase moves only along the phase table (``phase``); every move is one JSON line
in ``<state_dir>/events.jsonl`` and one typed event (``bus``).

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
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .._core.serviceconfig import TenantToken
from .._core.spec import WorkerSpec
from .._core.trust import untrusted
from .._exceptions import BerthError, PolicyError, StateError, WorkerNotFound
from .._node.node import Node
from .._runtimes.base import WorkerState
from .assignments import (
    MAX_ASSIGNMENTS_BYTES,
    Assignments,
    Rejection,
    load_assignments,
    one_user_per_topology,
    past_the_maximum,
)
from .bus import Listener
from .desired import Saved
from .lock import SupervisorLock, check_claim
from .phase import Phase
from .reconcile import Reconciler
from .slot import Entry, SlotView
from .slots import SlotTable
from .tenancy import PutOutcome, owns, tenant_document
from .watch import SourceWatch

log = logging.getLogger("berth.supervisor")

MAX_DESIRED_BYTES = MAX_ASSIGNMENTS_BYTES
"""What the whole desired state may take as JSON (tenants' PUTs add up; it is saved on every change)."""


class Supervisor:
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
        self.node = node
        self.config = node.config
        self.settings = node.config.supervisor
        self.assignments_path = assignments_path
        self._trust = untrusted if trust_source else None
        self.fed_by = assignments_path
        """Where the desired state comes from when the API may not set it (the assignments file or
        directory; the cluster agent's document): ``PUT /assignments`` is then refused (409)."""
        self.lock = SupervisorLock(self.config.state_dir)
        """Held from ``start`` to ``stop``; the cluster agent runs the supervisor under it."""
        self.slots = SlotTable(self.config, clock, wall, gate=lambda: self.lock.held)
        self.loop = Reconciler(self.slots, node, before_pass=self._check_source)
        self.state_problem: str | None = None
        """Why the persisted state could not be loaded (then nothing is removed until new
        assignments arrive)."""
        self._source = SourceWatch(assignments_path, self.poke) if assignments_path else None
        self._put_lock = threading.Lock()
        self._started_at: float | None = None
        node.set_default_callback(self.loop.exited)

    def subscribe(self, listener: Listener) -> None:
        """Be told of every launch, exit, transition and pass (``bus``)."""
        self.slots.bus.subscribe(listener)

    # -- desired state ----------------------------------------------------------------------

    def set_assignments(self, new: Assignments, *, version: str | None = None) -> list[Rejection]:
        """Replace the desired state; returns the rejected entries.

        Each entry is validated like a launch request, and the plan that says so is kept for its
        launch; a rejected one (and every entry of a source that could not be read) keeps its
        worker's previous spec. ``version`` is the caller's opaque assignment version: persisted
        with the desired state and reported by ``version``, ``applied_version`` and on each worker.
        The new state is persisted atomically before this returns; from then on workers not in
        it are removed.
        """
        rejected = list(new.rejected)
        accepted: dict[str, Entry] = {}
        for wid, spec in new.specs.items():
            source = new.sources.get(wid, "?")
            try:
                plan = self.node.plan(spec)  # validated like a launch request: image, user, mounts, cores
            except BerthError as exc:
                rejected.append(Rejection(source, new.indexes.get(wid), wid, exc.field, exc.reason))
                continue
            accepted[wid] = Entry(spec, source, plan)
        for r in one_user_per_topology({w: e.spec for w, e in accepted.items()},
                                       {w: e.source for w, e in accepted.items()}):
            rejected.append(dataclasses.replace(r, index=new.indexes.get(r.worker_id or "")))
            del accepted[r.worker_id or ""]
        t = self.slots
        with t.lock:
            current = t.desired()
            keep_ids = {r.worker_id for r in rejected if r.worker_id}
            for wid, entry in current.items():
                if wid not in accepted and (new.keep_all or entry.source in new.broken_sources or wid in keep_ids):
                    accepted[wid] = entry
            specs = {w: e.spec for w, e in accepted.items()}
            for wid, why in past_the_maximum(specs, current, self.settings.max_workers, MAX_DESIRED_BYTES).items():
                rejected.append(self._too_many(accepted.pop(wid).source, new.indexes.get(wid), wid, why))
            seen = {(r.source, r.worker_id, r.field, r.reason) for r in t.rejected}
            t.assign(accepted, version, rejected)
            self.state_problem = None
            # Assigned again: a worker rejected at launch gets one more try (the operator may have
            # loaded its image meanwhile); it is not retried on its own.
            again = [s for s in t.assigned() if s.phase == Phase.REJECTED]
        for slot in again:
            t.change(slot, "assigned again: one more try", partial(slot.transition, Phase.PENDING))
        for r in rejected:
            if (r.source, r.worker_id, r.field, r.reason) not in seen:  # once, not on every re-read
                t.note(r.worker_id or "-", None, f"assignment rejected: {r}", logging.WARNING, rejection=r.to_dict())
        t.persist()
        return rejected

    def put(self, entries: Sequence[Any], version: str | None, tenant: TenantToken | None = None) -> PutOutcome:
        """``PUT /assignments``: the operator's replaces the desired state; a tenant's replaces only
        the tenant's part, and is refused whole (nothing applied) if any entry is not the tenant's
        to make (``tenancy``). One at a time: each reads what the last one left."""
        with self._put_lock:
            doc = tenant_document(tenant, entries, version, self.slots.desired())
            if doc.refused:
                return doc
            rejected = self.set_assignments(doc.assignments, version=version if tenant is None else self.version)
            accepted = sorted(w for w, s in self.desired().items() if owns(tenant, s))
            return dataclasses.replace(doc, accepted=accepted, rejected=rejected)

    @staticmethod
    def _too_many(source: str, index: int | None, wid: str, why: str) -> Rejection:
        return Rejection(source, index, wid, "workers", f"{why}; the workers already assigned keep their places")

    def reload(self) -> list[Rejection]:
        """Read the assignments file(s) again and apply them."""
        assert self._source is not None and self.assignments_path is not None
        self._source.mark_read()
        return self.set_assignments(load_assignments(self.assignments_path, trust=self._trust))

    def _check_source(self) -> None:
        if self._source is not None and self._source.changed():
            self.reload()

    def desired(self) -> dict[str, WorkerSpec]:
        return {w: e.spec for w, e in self.slots.desired().items()}

    @property
    def version(self) -> str | None:
        """The assignment version of the desired state (None when not given)."""
        return self.slots.version

    @property
    def loaded(self) -> bool:
        """The desired state is known; until it is, no worker is removed."""
        return self.slots.loaded

    def applied_version(self) -> str | None:
        """The desired version once every assigned worker has been launched (or adopted) from
        its current spec, rejected, or waits for capacity, and no other worker is left (none being
        stopped, none in the last listing); None while replacements, launches or removals are on their way."""
        t = self.slots
        with t.lock:
            if not all(s.settled(t.version) for s in t.assigned()):
                return None
            ours = {*(s.worker_id for s in t.all() if s.busy), *(x.worker_id for x in self.listed)} - \
                {w for ids in self.conflicts.values() for w in ids}  # another supervisor's are not ours to stop
            if ours - set(t.desired()):
                return None
            return t.version

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Take the node's lock, load the persisted state, refuse another supervisor's node,
        adopt what runs (and report what exited meanwhile), then start reconciling. A state dir
        that holds another node's state is refused first (``StateError``), before anything."""
        self.node.bind_state()
        self.lock.acquire(node=self.config.node.name, state_dir=self.config.state_dir)
        self.slots.flush_events()  # lines made before the lock was held (set_assignments before start)
        self._started_at = self.slots.clock()
        try:
            self._restore(keep_desired=self.slots.loaded)  # set before start (the cluster agent does): it wins
            self.slots.persist()
            if self._source is not None:
                self._source.start()
                self.reload()
            listed = self.node.ps()
            check_claim(listed, self.config.state_dir, self.config.node.name)
            self.slots.claim(listed)  # planned stops of containers that are gone: their exits will never come
            report = self.node.recover()
        except BaseException:
            self.lock.release()
            raise
        for wid in report.adopted:  # one line each: the pass that finds it running says nothing more
            slot = self.slots.get(wid)
            if slot is not None and slot.entry is not None:
                self.slots.change(slot, "adopted after restart", partial(slot.transition, Phase.RUNNING))
            else:
                self.slots.note(wid, Phase.RUNNING, "adopted after restart")
        for wid in report.removed:
            self.slots.note(wid, None, "removed half-made container")
        if self._source is not None and self._source.notified:
            self.loop.poll_s = self.settings.resync_s
        self.loop.start()

    def _restore(self, keep_desired: bool) -> None:
        try:
            saved = self.slots.load()
        except StateError as exc:
            if not keep_desired:
                self.state_problem = exc.reason
                log.error("%s; no worker is removed until assignments are set again", exc.reason)
            return
        if saved is not None:
            self._apply_saved(saved, keep_desired)

    def _apply_saved(self, saved: Saved, keep_desired: bool) -> None:
        """The saved desired state (unless one was set before ``start``) and each worker's
        counters; a worker whose spec has changed since keeps its history, not its backoff."""
        t = self.slots
        now, wall = t.clock(), t.wall()
        with t.lock:
            t.unclaimed.update(dict.fromkeys(saved.planned))
            if not keep_desired:
                # Saved under a larger max_workers: the maximum holds for what was accepted then, too.
                specs = dict(sorted(saved.specs.items()))
                rejected = list(saved.rejected)
                for wid, why in past_the_maximum(specs, (), self.settings.max_workers, MAX_DESIRED_BYTES).items():
                    del specs[wid]
                    rejected.append(self._too_many(saved.sources.get(wid, "?"), None, wid, why))
                    log.warning("%s: assignment rejected: %s", wid, rejected[-1].reason)
                t.assign({w: Entry(s, saved.sources.get(w, "?")) for w, s in specs.items()}, saved.version, rejected)
            for slot in t.assigned():
                old = saved.specs.get(slot.worker_id)
                if old is not None:
                    slot.restore(saved.counters.get(slot.worker_id) or {}, old, now, wall, self.settings.backoff_cap_s)

    def stop(self, drain: bool = False, progress: Callable[[int, int], None] | None = None) -> None:
        """Stop reconciling. Workers keep running unless ``drain`` (upgrade-safe by default);
        ``progress(done, total)`` is called as drained workers are stopped."""
        self.loop.stop()
        try:
            if drain:
                others = {w for ids in self.conflicts.values() for w in ids}
                self.loop.actions.drain([w for w in self.node.ps() if w.worker_id not in others], progress)
        finally:
            if self._source is not None:
                self._source.close()
            self.node.close()
            self.lock.release()

    def kill(self, worker_id: str, grace_s: float | None = None) -> None:
        """Stop a worker now, without waiting; still assigned, it is started again at once (an
        operator's restart: not a failure, no backoff)."""
        with self.slots.lock:
            slot = self.slots.get(worker_id)
            if slot is None or slot.entry is None or slot.phase is None:
                raise WorkerNotFound(worker_id)
            if slot.phase not in (Phase.RUNNING, Phase.STALLED) or slot.container_id is None \
                    or slot.busy not in (None, "launch"):
                raise PolicyError("worker_id", f"worker {worker_id!r} is {slot.busy or slot.phase.value}, not running")
            slot.operator_stop = slot.container_id
        self.loop.actions.kill(slot, self.settings.grace_s if grace_s is None else grace_s)

    def poke(self) -> None:
        self.loop.poke()

    # -- status -----------------------------------------------------------------------------

    def statuses(self) -> list[SlotView]:
        """Every worker the supervisor tracks (assigned, or being removed), by worker id."""
        return self.slots.views()

    def status(self, worker_id: str) -> SlotView:
        view = self.slots.view(worker_id)
        if view is None:
            raise WorkerNotFound(worker_id)
        return view

    def rejections(self) -> list[Rejection]:
        """Assignment entries refused when set, assigned workers that cannot launch as given, and
        those waiting for the node's capacity (``retried``)."""
        return self.slots.rejections()

    def counts(self, tenant: TenantToken | None = None) -> dict[str, int]:
        """Workers by phase (only ``tenant``'s, given one)."""
        return self.slots.counts(lambda spec: owns(tenant, spec))

    @property
    def rejected(self) -> list[Rejection]:
        """The entries refused when the desired state was last set."""
        return self.slots.rejected

    @property
    def listed(self) -> list[WorkerState]:
        """The node's workers on the engine, as the last pass listed them."""
        return self.loop.listed

    @property
    def conflicts(self) -> dict[str, list[str]]:
        """Another supervisor's state dir -> its workers on this engine, left alone."""
        return self.loop.conflicts

    def last_pass_age(self) -> float | None:
        last = self.loop.last_pass
        return None if last is None else self.slots.clock() - last

    def stale(self) -> bool:
        """No reconcile pass has completed for ``stale_after_s`` (or none yet, that long after start)."""
        last = self.loop.last_pass if self.loop.last_pass is not None else self._started_at
        return last is None or self.slots.clock() - last > self.settings.stale_after_s
