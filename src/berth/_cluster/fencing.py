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
import time

from .._core.clusterconfig import ClusterSection
from .._service.assignments import Assignments
from .._service.supervisor import Supervisor
from .zk import ConnState

log = logging.getLogger("berth.agent")


class Fencing:
    sup: Supervisor
    settings: ClusterSection
    _fenced: bool
    _presumed_dead: bool
    _dead_after_s: float | None

    def _write_status(self) -> None:
        raise NotImplementedError  # the agent's

    def fence_after(self) -> float | None:
        """Seconds without ZooKeeper after which this node stops its workers (None: fencing off)."""
        limit = self.settings.fence_after_s
        if limit is not None and self._dead_after_s is not None:
            limit = min(limit, max(0.0, self._dead_after_s - self.sup.settings.grace_s))
        return limit

    def _check_fencing(self) -> None:
        """Say so when the coordinator's dead_after leaves fencing no room: it then stops the workers
        at every loss of the connection, a leader election of the ensemble included."""
        limit = self.fence_after()
        if limit is not None and self._dead_after_s is not None and limit < self.settings.session_timeout_s:
            log.warning("fencing stops every worker %.0fs after the connection is lost: the coordinator moves them "
                        "after %.0fs (dead_after) and a stop takes up to %.0fs (grace_s); a longer --dead-after "
                        "spares the workers short losses of the connection", limit, self._dead_after_s,
                        self.sup.settings.grace_s)

    def _cut_off_due(self, conn: ConnState) -> list[float]:
        """When (monotonic) the next decision about a node cut off is due."""
        if conn.connected or conn.down_since is None:
            return []
        due = []
        limit = self.fence_after()
        if limit is not None and not self._fenced:
            due.append(conn.down_since + limit)
        if self._dead_after_s is not None and not self._presumed_dead:
            due.append(conn.down_since + self._dead_after_s)
        return due

    def _cut_off(self, conn: ConnState) -> None:
        if conn.down_since is None:
            return
        away = time.monotonic() - conn.down_since
        limit = self.fence_after()
        if limit is not None and not self._fenced and away >= limit:
            log.warning("no ZooKeeper for %.0fs (fencing after %.0fs): stopping every worker until a document "
                        "is read", away, limit)
            self._fenced = True
            self.sup.set_assignments(Assignments(), version=None)
            self._write_status()
        if self._dead_after_s is not None and not self._presumed_dead and away >= self._dead_after_s:
            self._presumed_dead = True
            if not self._fenced:
                log.warning("no ZooKeeper for %.0fs, the coordinator's dead_after: this node may have been declared "
                            "dead and its workers started elsewhere; they run here too until a document is read "
                            "(fencing is off)", away)
            self._write_status()
