"""A node cut off from ZooKeeper, and the window in which its workers may run twice.

The coordinator moves a node's workers once its registration has been gone for ``dead_after_s``
(the coordinator says how long in every document it writes). The registration goes at most a
session timeout after the node's last contact with the ensemble, so a node cut off for
``dead_after_s`` knows it may have been declared dead: from then on its workers may also run
elsewhere, under new ids.

- Fencing off (the default; Storm's choice, availability first): the node runs its workers on,
  says so (``presumed_dead``: a WARNING, ``/healthz``, ``status.json``), and stops the ones that
  are no longer its own as soon as it reads its document again (reconnected, or restarted with
  ZooKeeper reachable). The window lasts as long as the partition.
- Fencing on (``fence_after_s``): the node stops every worker once cut off for ``fence_after_s``,
  and never later than ``dead_after_s`` less its grace period, so that they have stopped before
  the coordinator can move them: no worker runs twice. They start again when a document is read.
"""

from __future__ import annotations

import logging

log = logging.getLogger("berth.agent")


def fence_after(configured: float | None, dead_after: float | None, grace_s: float) -> float | None:
    """Seconds without ZooKeeper after which the node stops its workers (None: fencing off): the
    operator's figure, and never later than the coordinator's ``dead_after`` less the time a stop
    takes, so that they have stopped before the coordinator may move them."""
    if configured is not None and dead_after is not None:
        return min(configured, max(0.0, dead_after - grace_s))
    return configured


def warn_if_no_room(limit: float | None, dead_after: float | None, grace_s: float, session_timeout_s: float) -> None:
    """Say so when the coordinator's dead_after leaves fencing no room: it then stops the workers
    at every loss of the connection, a leader election of the ensemble included."""
    if limit is not None and dead_after is not None and limit < session_timeout_s:
        log.warning("fencing stops every worker %.0fs after the connection is lost: the coordinator moves them "
                    "after %.0fs (dead_after) and a stop takes up to %.0fs (grace_s); a longer --dead-after "
                    "spares the workers short losses of the connection", limit, dead_after, grace_s)
