"""What the agent tells: its node's state znode (for the coordinator), its health (for the
operator: ``/healthz``, ``status.json``, metrics). Sparse by design: the state is written at most
once per ``state_interval_s``, and only while the node holds its registration."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError

from .._runtimes.base import WorkerState
from .._service.supervisor import Supervisor
from .cache import write_status
from .documents import DocumentStatus, NodeState, encode_state, engine_reports, now, worker_reports
from .layout import Credential, ZkLayout, state_acl
from .zk import UNAVAILABLE, Connection, ConnState, explain

log = logging.getLogger("berth.agent")


class Reporting:
    sup: Supervisor
    conn: Connection
    node: str
    layout: ZkLayout
    cred: Credential
    dir: Path
    counters: dict[str, int]
    _cond: threading.Condition
    _state_dirty: bool
    _last_state_write: float
    _coordinator: str | None
    _registered: int | None
    _applied: str | None
    _reported_version: str | None
    _reported_engine: frozenset[tuple[str, str, str]]
    _doc: DocumentStatus | None
    _fenced: bool
    _presumed_dead: bool
    _problem: str | None
    _supervising: bool

    # -- reporting -----------------------------------------------------------------------------

    def node_state(self, conn: ConnState | None = None) -> NodeState:
        conn = conn or self.conn.state
        return NodeState(node=self.node, updated_at=now(),
                         session=f"{conn.session_id:#x}" if conn.session_id else None,
                         applied_version=self._applied, document=self._doc,
                         rejected=[r.to_dict() for r in self.sup.rejections()], fenced=self._fenced,
                         problem=self._problem, supervisor_version=self.sup.applied_version(),
                         workers=worker_reports(self.sup.statuses()),
                         engine=engine_reports(self.sup.listed, self.sup.conflicts))

    def _report_due(self) -> bool:
        """A pass changed what the coordinator is told without a transition: the supervisor's applied
        version (the last removed worker left the listing) or the engine's listing (an orphan)."""
        return self.sup.applied_version() != self._reported_version or \
            engine_seen(self.sup.listed) != self._reported_engine

    def _write_state(self, conn: ConnState) -> None:
        c, path = self.conn, self.layout.state(self.node)
        with self._cond:
            self._state_dirty = False
        state = self.node_state(conn)
        self._reported_version, self._reported_engine = state.supervisor_version, engine_seen(self.sup.listed)
        body = encode_state(state)
        self._last_state_write = time.monotonic()
        try:
            try:
                c.call(c.client.set_async, path, body)
            except NoNodeError:
                if self._coordinator is None:
                    raise
                c.call(c.client.create_async, path, body, acl=state_acl(self._coordinator, self.cred.digest_id))
        except (*UNAVAILABLE, NoNodeError, NoAuthError, NodeExistsError) as exc:
            log.info("state write postponed: %s", explain(exc, path))
            self._state_dirty = True
            return
        self.counters["state_writes"] += 1

    def health(self) -> dict[str, Any]:
        conn = self.conn.state
        registered = conn.connected and conn.session_id == self._registered
        ok = registered and not self._fenced and self._problem is None
        return {"status": "ok" if ok else "degraded", "node": self.node, "zookeeper": conn.state,
                "session": f"{conn.session_id:#x}" if conn.session_id else None, "registered": registered,
                "session_expirations": conn.expirations, "problem": self._problem, "fenced": self._fenced,
                "presumed_dead": self._presumed_dead,
                "applied_version": self._applied, "document": self._doc.model_dump() if self._doc else None,
                "supervising": self._supervising, "counters": dict(self.counters)}

    def _write_status(self) -> None:
        try:
            write_status(self.dir, {**self.health(), "updated_at": now()})
        except OSError as exc:
            log.error("cannot write the agent status: %s", exc)


def engine_seen(listed: Sequence[WorkerState]) -> frozenset[tuple[str, str, str]]:
    return frozenset((w.worker_id, w.container_id, str(w.state)) for w in listed)
