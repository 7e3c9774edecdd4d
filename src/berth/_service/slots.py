"""The supervisor's state: one ``WorkerSlot`` per worker, under one lock, and what it makes up.

The assigned slots, in assignment order, are the desired state (with its version); the others are
workers berth is removing. Every phase change goes through ``change``: the slot's move (checked
against the phase table) under the lock, its line in ``events.jsonl``, then the typed event, told
outside the lock (listeners may call back). The desired state, counters and planned stops are
persisted (``desired``) whenever they change, only under the node's lock (``gate``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .._core.config import NodeConfig
from .._core.spec import WorkerSpec
from .._runtimes.base import ExitRecord, WorkerState
from .assignments import Rejection
from .bus import Bus, Transition
from .desired import DesiredStore, Saved
from .events import EventLog
from .phase import WAITING, Phase
from .slot import Entry, SlotView, WorkerSlot

log = logging.getLogger("berth.supervisor")

MAX_UNCLAIMED = 4096


class SlotTable:
    def __init__(self, config: NodeConfig, clock: Callable[[], float], wall: Callable[[], float],
                 gate: Callable[[], bool]) -> None:
        """``clock`` (monotonic) for delays, ``wall`` (epoch seconds) for what is persisted; ``gate``
        says whether this supervisor holds the node's lock (nothing is written without it)."""
        self.settings = config.supervisor
        self.clock, self.wall, self._gate = clock, wall, gate
        self.lock = threading.RLock()
        self.wake = threading.Condition(self.lock)
        """Notified when there is something for the loop: an exit, an action over, a new desired state."""
        self._slots: dict[str, WorkerSlot] = {}
        self.version: str | None = None
        self.loaded = False
        """Desired state is known (loaded, put or read from a file): only then is anything removed."""
        self.rejected: list[Rejection] = []
        """Entries refused when the desired state was set (some name no worker)."""
        self.exits: list[ExitRecord] = []
        """Exits reported by the node, for the loop to handle."""
        self.actions = 0
        """Actions ended so far (``WorkerSlot.touched``)."""
        self.unclaimed: dict[str, None] = {}
        """Planned stops whose worker has no slot: read from ``supervisor.json`` until a listing says
        whose they are, or of workers forgotten before their exit came (at most ``MAX_UNCLAIMED``)."""
        self.bus = Bus()
        self._events = EventLog(config.state_dir, gate=gate)
        self._store = DesiredStore(config.state_dir)
        self._save_lock = threading.Lock()

    # -- the slots -------------------------------------------------------------------------------

    def get(self, worker_id: str) -> WorkerSlot | None:
        with self.lock:
            return self._slots.get(worker_id)

    def slot(self, worker_id: str) -> WorkerSlot:
        """The worker's slot; a new one, with no phase, for a container berth only removes."""
        with self.lock:
            return self._slots.setdefault(worker_id, WorkerSlot(worker_id))

    def all(self) -> list[WorkerSlot]:
        with self.lock:
            return list(self._slots.values())

    def assigned(self) -> list[WorkerSlot]:
        """The assigned slots, in assignment order (room goes to them in that order)."""
        with self.lock:
            return [s for s in self._slots.values() if s.entry is not None]

    def desired(self) -> dict[str, Entry]:
        with self.lock:
            return {w: s.entry for w, s in self._slots.items() if s.entry is not None}

    def assign(self, entries: dict[str, Entry], version: str | None, rejected: list[Rejection]) -> None:
        """Make ``entries`` (in their order) the desired state; the others are no longer assigned."""
        with self.lock:
            before, self._slots = self._slots, {}
            for wid, entry in entries.items():
                slot = before.pop(wid, None)
                if slot is None:
                    slot = WorkerSlot.for_entry(entry)
                else:
                    slot.assign(entry)
                self._slots[wid] = slot
            for wid, slot in before.items():
                slot.entry = None
                self._slots[wid] = slot
            self.version, self.rejected, self.loaded = version, rejected, True
            self.wake.notify_all()

    def forget(self, slots: Iterable[WorkerSlot]) -> None:
        with self.lock:
            for slot in slots:
                self._slots.pop(slot.worker_id, None)
                self._unclaimed(slot.planned)

    def _unclaimed(self, container_ids: Iterable[str]) -> None:
        self.unclaimed.update(dict.fromkeys(container_ids))
        while len(self.unclaimed) > MAX_UNCLAIMED:
            del self.unclaimed[next(iter(self.unclaimed))]

    def claim(self, listed: Iterable[WorkerState]) -> None:
        """Give the planned stops read from ``supervisor.json`` to the workers the engine lists with
        those containers; the others are forgotten (their exits will never come)."""
        with self.lock:
            for w in listed:
                if w.container_id in self.unclaimed:
                    self.slot(w.worker_id).plan_stop(w.container_id)
            self.unclaimed.clear()

    def unplan(self, slot: WorkerSlot | None, container_id: str) -> bool:
        """Whether berth stopped that container (its exit is then no failure); forgotten now."""
        with self.lock:
            if slot is not None and container_id in slot.planned:
                del slot.planned[container_id]
                return True
            if container_id in self.unclaimed:
                del self.unclaimed[container_id]
                return True
            return False

    # -- changes -------------------------------------------------------------------------------

    def change(self, slot: WorkerSlot, reason: str, move: Callable[[], None], level: int = logging.INFO,
               **facts: Any) -> None:
        """Make ``move`` (one of the slot's moves: its phase and the fields that go with it) under
        the lock, journal it, then tell (outside the lock: listeners may call back)."""
        self.bus.publish(self.move(slot, reason, move, level, **facts))

    def move(self, slot: WorkerSlot, reason: str, move: Callable[[], None], level: int = logging.INFO,
             **facts: Any) -> Transition:
        """``change`` without the telling, for a caller that holds the lock across a decision and
        its move and tells once it has let go."""
        with self.lock:
            old = slot.phase
            move()
            line = self._events.write(slot.worker_id, old, slot.phase, reason, level=level, **facts)
            return Transition(slot.worker_id, old, slot.phase, reason, line)

    def note(self, worker_id: str, new: Phase | None, reason: str, level: int = logging.INFO, **facts: Any) -> None:
        """An event of a worker without a phase change of its own (a rejection, a container berth
        only removes, one adopted that is not assigned)."""
        line = self._events.write(worker_id, None, new, reason, level=level, **facts)
        self.bus.publish(Transition(worker_id, None, new, reason, line))

    def flush_events(self) -> None:
        """Write the lines made before the node's lock was held (call once it is)."""
        self._events.flush()

    # -- what is said of them ------------------------------------------------------------------

    def views(self) -> list[SlotView]:
        now, wall = self.clock(), self.wall()
        with self.lock:
            out = [s.view(now, wall) for s in sorted(self._slots.values(), key=lambda s: s.worker_id)]
        return [v for v in out if v is not None]

    def view(self, worker_id: str) -> SlotView | None:
        with self.lock:
            slot = self._slots.get(worker_id)
            return slot.view(self.clock(), self.wall()) if slot is not None else None

    def counts(self, which: Callable[[WorkerSpec], bool] = lambda _: True) -> dict[str, int]:
        """Workers by phase (every phase named, 0 or not), of those ``which`` keeps."""
        out = {p.value: 0 for p in Phase}
        with self.lock:
            for s in self._slots.values():
                if s.phase is not None and s.spec is not None and which(s.spec):
                    out[s.phase.value] += 1
        return out

    def rejections(self) -> list[Rejection]:
        """Entries refused when set, then assigned workers that cannot launch as given, then those
        waiting for the node's capacity (``retried``)."""
        with self.lock:
            later = [r for s in sorted(self._slots.values(), key=lambda s: s.worker_id)
                     if (r := s.rejection()) is not None]
            return [*self.rejected, *(r for r in later if not r.retried), *(r for r in later if r.retried)]

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> Saved:
        now, wall = self.clock(), self.wall()
        with self.lock:
            assigned = [s for s in self._slots.values() if s.entry is not None]
            return Saved(specs={s.worker_id: s.entry.spec for s in assigned if s.entry},
                         sources={s.worker_id: s.source for s in assigned},
                         version=self.version, counters={s.worker_id: s.counters(now, wall) for s in assigned},
                         rejected=list(self.rejected),
                         planned=[*self.unclaimed, *(c for s in self._slots.values() for c in s.planned)])

    def persist(self) -> None:
        with self.lock:
            if not self.loaded or not self._gate():
                return  # never overwrite a state we could not read, nor another supervisor's
        with self._save_lock:
            self._store.save(self.snapshot())

    def load(self) -> Saved | None:
        """The persisted state (``StateError`` when it is there but cannot be used)."""
        return self._store.load()


def next_wait(now: float, most: float, slots: Iterable[WorkerSlot], stall_sweep_at: float) -> float:
    """How long the loop may sleep (at most ``most``, at least 50 ms): until a backoff ends, a
    stalled worker is due or looked at again, or a failed removal is tried again (slots with an
    action in flight wake the loop when it ends)."""
    wait = most
    for s in slots:
        if s.busy is not None:
            continue
        if s.phase in WAITING:
            wait = min(wait, s.next_start - now)
        elif s.phase == Phase.STALLED:
            wait = min(wait, s.next_start - now, stall_sweep_at - now)
        if s.stop_retry_at is not None:
            wait = min(wait, s.stop_retry_at - now)
    return max(wait, 0.05)
