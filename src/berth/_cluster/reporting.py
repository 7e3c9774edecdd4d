"""What the agent tells the coordinator: its node's state znode. Sparse by design: written from
the agent's loop only while the node holds its registration, and at most once per
``state_interval_s``, whatever the supervisor does meanwhile."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError

from .._runtimes.base import WorkerState
from .._service.supervisor import Supervisor
from .documents import DocumentStatus, NodeState, encode_state, engine_reports, now, worker_reports
from .layout import ZkLayout, state_acl
from .zk import UNAVAILABLE, Connection, explain

log = logging.getLogger("berth.agent")


class Reporter:
    def __init__(self, conn: Connection, layout: ZkLayout, node: str, digest_id: str, sup: Supervisor,
                 interval_s: float) -> None:
        self.conn = conn
        self.path = layout.state(node)
        self.node = node
        self.digest_id = digest_id
        self.sup = sup
        self.interval_s = interval_s
        self.dirty = True
        self.last_write = 0.0
        """time.monotonic() of the last attempt."""
        self.writes = 0
        self._version: str | None = None
        self._engine: frozenset[tuple[str, str, str]] = frozenset()

    def mark(self) -> None:
        self.dirty = True

    def news(self) -> bool:
        """A supervisor's pass changed what the coordinator is told without a transition: its applied
        version (the last removed worker left the listing) or the engine's listing (an orphan)."""
        return self.sup.applied_version() != self._version or engine_seen(self.sup.listed) != self._engine

    def due(self) -> float | None:
        """When the next write may be made (None: nothing to tell)."""
        return self.last_write + self.interval_s if self.dirty else None

    def node_state(self, session: int | None, applied: str | None, document: DocumentStatus | None,
                   fenced: bool, problem: str | None) -> NodeState:
        return NodeState(node=self.node, updated_at=now(), session=f"{session:#x}" if session else None,
                         applied_version=applied, document=document,
                         rejected=[r.to_dict() for r in self.sup.rejections()], fenced=fenced,
                         problem=problem, supervisor_version=self.sup.applied_version(),
                         workers=worker_reports(self.sup.statuses()),
                         engine=engine_reports(self.sup.listed, self.sup.conflicts))

    def write(self, state: NodeState, coordinator: str | None, at: float) -> None:
        """Write ``state`` (``at``: now, monotonic); on failure it stays due."""
        self.dirty = False
        self._version, self._engine = state.supervisor_version, engine_seen(self.sup.listed)
        body = encode_state(state)
        self.last_write = at
        conn = self.conn
        try:
            try:
                conn.call(conn.client.set_async, self.path, body)
            except NoNodeError:
                if coordinator is None:
                    raise
                conn.call(conn.client.create_async, self.path, body, acl=state_acl(coordinator, self.digest_id))
        except (*UNAVAILABLE, NoNodeError, NoAuthError, NodeExistsError) as exc:
            log.info("state write postponed: %s", explain(exc, self.path))
            self.dirty = True
            return
        self.writes += 1


def engine_seen(listed: Sequence[WorkerState]) -> frozenset[tuple[str, str, str]]:
    return frozenset((w.worker_id, w.container_id, str(w.state)) for w in listed)
