"""What is left of the node's capacity during one reconcile pass, taken in assignment order.

The node's own admission (``berth._node.admission``) is the truth at each launch; this is the
supervisor's plan for a pass, from the pass's listing: a worker that needs room (it has no
container) gets it in the order it was assigned, so the launches the pool runs at once do not
race each other for the last room, and a worker that would not fit is not launched at all (the
launches of other berth processes are seen once the engine lists them, and by each launch's own
admission before that).
The ended containers of assigned workers count as held: a worker between two runs keeps its
place against one that waits for capacity.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from .._core.limits import NodeCapacity, Usage, check_admission
from .._core.plan import Plan
from .._exceptions import BerthError, CapacityError
from .._node.node import Node
from .._runtimes.base import WorkerState
from .slot import WorkerSlot


class Room:
    """Counted on first use (a pass where every worker has its container counts nothing), from
    the pass's listing and the supervisor's own launches in flight: never under the admission
    lock, which another berth process may hold (stopped, say): the loop must not wait for it."""

    def __init__(self, node: Node, listed: Sequence[WorkerState], assigned: Collection[str],
                 launching: Iterable[Usage] = (), plan: Callable[[WorkerSlot], Plan] | None = None) -> None:
        """``plan`` gives a slot's plan (the one its assignment was validated with, kept)."""
        self._node, self._listed, self._assigned = node, listed, assigned
        self._launching, self._plan = launching, plan
        self._left: tuple[NodeCapacity, Usage] | None = None
        self._unknown = False

    def take(self, rec: WorkerSlot) -> CapacityError | None:
        """Take what ``rec`` needs, or say why it does not fit (its ``want`` is kept on it). None
        too when it cannot be known this pass: then the launch's own admission decides."""
        if self._left is None and not self._unknown:
            try:
                used = self._node.usage(self._listed, held=self._assigned, launching=False)
                self._left = (self._node.capacity, sum(self._launching, used))
            except BerthError:
                self._unknown = True
        if self._left is None:
            return None
        if rec.want is None:
            try:
                assert rec.spec is not None and self._plan is not None
                rec.want = self._node.usage_of(self._plan(rec))
            except BerthError:
                return None  # its launch says why it cannot run
        capacity, used = self._left
        try:
            check_admission(rec.want, used, capacity)
        except CapacityError as exc:
            return exc
        except BerthError:
            return None
        self._left = (capacity, used + rec.want)
        return None


def in_flight(slots: Iterable[WorkerSlot], listed: Sequence[WorkerState]) -> list[Usage]:
    """What the supervisor's own launches in flight take, while the engine does not list them yet."""
    ids = {w.worker_id for w in listed}
    return [s.want for s in slots if s.busy == "launch" and s.worker_id not in ids and s.want is not None]
