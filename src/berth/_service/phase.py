"""The supervisor's phases of an assigned worker, and the one table of the moves between them.

Not to be confused with the runtime's values (``_runtimes.base``): ``WorkerStatus`` is where a
*container* is in its life (created, running, exited), ``WorkerState`` what the runtime reports
about one container now, ``ExitRecord`` how one container ended. A ``Phase`` is where an
*assignment* is in the supervisor's cycle (pending, running, backoff, …); it outlives any one
container of the worker.

Like supervisord's process states, a phase moves only along ``TRANSITIONS``: anything else is a
bug of the supervisor's. Tests run with ``STRICT`` on, where such a move raises and is recorded in
``VIOLATIONS``; in production it is logged and the move is made (one worker's slot must never stop
the loop that serves the others).
"""

from __future__ import annotations

import logging
from collections import deque
from enum import StrEnum

from .._core.timefmt import iso_utc
from .._exceptions import IllegalTransition

log = logging.getLogger("berth.supervisor")


def iso(t: float | None) -> str | None:
    """A wall-clock time as ISO 8601 UTC with microseconds, the one time format of the API."""
    if t is None:
        return None
    return iso_utc(t)


class Phase(StrEnum):
    """Where an assigned worker is in the supervisor's cycle (not a container's status)."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    """Ended and about to be restarted at once (a healthy run, or an operator's kill)."""
    BACKOFF = "backoff"
    CRASH_LOOPING = "crash-looping"
    FAILED = "failed"
    """The launch (or a stop) failed for a reason that may pass (engine error); retried with backoff."""
    REJECTED = "rejected"
    """It can never launch as given (policy, identity, missing image): not retried until changed."""
    NO_CAPACITY = "no-capacity"
    """The node's capacity is taken (memory, cpu or pids of the workers it holds): launched once it
    fits, without a failure counted or a backoff."""
    STALLED = "stalled"
    """Its container runs but its PID 1 is stopped (ptrace from inside the worker): it cannot end
    by itself, so its exit would never be seen; killed and started again after ``stalled_after_s``."""
    STOPPING = "stopping"
    STOPPED = "stopped"


P = Phase
WAITING = (P.BACKOFF, P.CRASH_LOOPING, P.FAILED)
"""Phases that end when the worker's backoff is due."""
SETTLED = (P.REJECTED, P.NO_CAPACITY)
"""An assigned worker in these phases has its version applied as far as it can be."""
ENDED = (P.EXITED, P.BACKOFF, P.CRASH_LOOPING)
"""Where an exit of the worker's container leads (``decisions.decide_exit``)."""

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.PENDING: frozenset({P.STARTING, P.RUNNING, P.NO_CAPACITY, P.FAILED, P.STOPPING, *ENDED}),
    P.STARTING: frozenset({P.RUNNING, P.NO_CAPACITY, P.REJECTED, P.FAILED}),
    P.RUNNING: frozenset({*ENDED, P.STALLED, P.STOPPING, P.FAILED, P.STARTING, P.NO_CAPACITY}),
    P.STALLED: frozenset({P.RUNNING, *ENDED, P.STOPPING, P.FAILED, P.STARTING, P.NO_CAPACITY}),
    P.EXITED: frozenset({P.STARTING, P.RUNNING, P.NO_CAPACITY, P.FAILED, P.STOPPING}),
    P.BACKOFF: frozenset({P.STARTING, P.RUNNING, P.NO_CAPACITY, P.FAILED, P.STOPPING, P.PENDING}),
    P.CRASH_LOOPING: frozenset({P.STARTING, P.RUNNING, P.NO_CAPACITY, P.FAILED, P.STOPPING, P.PENDING}),
    P.FAILED: frozenset({P.STARTING, P.RUNNING, P.NO_CAPACITY, P.FAILED, P.STOPPING, P.PENDING, *ENDED}),
    P.REJECTED: frozenset({P.PENDING, P.RUNNING, P.STOPPING}),
    P.NO_CAPACITY: frozenset({P.STARTING, P.RUNNING, P.PENDING, P.FAILED, P.STOPPING}),
    P.STOPPING: frozenset({P.STOPPED, P.FAILED, P.STARTING}),
    P.STOPPED: frozenset({P.STARTING, P.RUNNING, P.NO_CAPACITY, P.FAILED}),
}
"""Each phase and the phases it may move to (docs/supervisor.md has it as a table):

- pending: launched, found running (adopted), waiting for capacity, failed, stopped (no longer
  assigned, drained), or ended (an exit that happened while berth was down, found at its start);
- starting: the launch's outcome (running, no room, rejected, failed);
- running and stalled: ended, stalled or running again, stopped, failed (an action for it raised),
  launched again or waiting for room (its container was removed behind berth's back);
- exited, backoff, crash-looping, failed, no-capacity: due (launched, or no room), found running,
  failed, stopped; a new assignment makes those that wait ``pending`` at once; a failed worker
  (an action raised while its container ran) may still end;
- rejected: assigned again (pending), found running (adopted), stopped;
- stopping: stopped, failed, or launched (a replacement, once the old container is gone);
- stopped: assigned again before it was forgotten.
"""

STRICT = False
"""True in tests: an illegal transition raises ``IllegalTransition`` (and is kept in ``VIOLATIONS``)."""
VIOLATIONS: deque[str] = deque(maxlen=100)


def check_transition(worker_id: str, old: Phase, new: Phase) -> None:
    """Raise (``STRICT``) or log when ``old`` may not move to ``new``; the caller goes on either way."""
    if new in TRANSITIONS[old]:
        return
    what = f"{worker_id}: {old.value} -> {new.value} is not a move of the supervisor's phase table"
    if STRICT:
        VIOLATIONS.append(what)
        raise IllegalTransition("phase", what)
    log.error("%s (a bug of berth's: made anyway)", what)
