"""What the coordinator's one-shot commands wait for: the active coordinator's pass over their
topologies (and the end of a rolling replacement), then every live node running its document.

Waiting is on ZooKeeper watches (kazoo's recipes on the nodes' state znodes and the schedule
state), each wait bounded by a deadline; a watch only wakes the waiter, who then reads what
changed. The watches are released when the wait ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import NoNodeError

from .._exceptions import ClusterError
from .admin import read_cluster
from .documents import load_json, version_number
from .layout import ZkLayout
from .watches import Wakeup, Watches
from .zk import Connection

log = logging.getLogger("berth.schedule")

WAITS = "waits"
"""The group of the watches a wait starts (released when it ends)."""


@dataclass
class Convergence:
    done: bool
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)


class Waiting:
    def __init__(self, conn: Connection, layout: ZkLayout, watches: Watches, wakeup: Wakeup) -> None:
        self.conn = conn
        self.layout = layout
        self.watches = watches
        self.wakeup = wakeup

    def schedule_state(self) -> dict[str, Any]:
        conn = self.conn
        try:
            data, _ = conn.call(conn.client.get_async, self.layout.schedule_state)
        except NoNodeError:
            return {}
        doc = load_json(data, "schedule state")
        return doc if isinstance(doc, dict) else {}

    def wait_for_pass(self, version: str | None, timeout_s: float, key: str = "topologies_version"
                      ) -> tuple[dict[str, str], dict[str, int]]:
        """Wait for the active coordinator's pass over these topologies (or this drain marker: its
        state names their ``version`` under ``key``) and for the end of any rolling replacement;
        return every node's document version and what could not be placed."""
        deadline = time.monotonic() + timeout_s
        self.watches.data(self.layout.schedule_state, group=WAITS)
        try:
            return self._until_passed(version, deadline, timeout_s, key)
        finally:
            self.watches.release(WAITS)

    def _until_passed(self, version: str | None, deadline: float, timeout_s: float, key: str
                      ) -> tuple[dict[str, str], dict[str, int]]:
        while True:
            seen = self.wakeup.mark()
            st = self.schedule_state()
            if version_number(st.get(key)) >= version_number(version) and not st.get("rolling"):
                views = read_cluster(self.conn, self.layout)
                return {n: v.doc_version for n, v in views.items() if v.doc_version}, dict(st.get("unplaced") or {})
            if time.monotonic() >= deadline:
                if version_number(st.get(key)) >= version_number(version):
                    raise ClusterError("schedule", f"the rolling replacement is still going on after {timeout_s:g}s "
                                                   f"(workers on their old spec: {st.get('rolling')})")
                raise ClusterError("schedule", f"the active coordinator did not place the topologies in {timeout_s:g}s")
            self.wakeup.wait(seen, min(1.0, deadline - time.monotonic()))

    # -- convergence ---------------------------------------------------------------------------

    def converge(self, versions: Mapping[str, str], timeout_s: float, running: bool = True) -> Convergence:
        """Wait (on watches of the nodes' state znodes) until every live node applied its version."""
        for name in versions:
            self.watches.data(self.layout.state(name), group=WAITS)
        try:
            return self._until_converged(versions, time.monotonic() + timeout_s, running)
        finally:
            self.watches.release(WAITS)

    def _until_converged(self, versions: Mapping[str, str], deadline: float, running: bool) -> Convergence:
        while True:
            seen = self.wakeup.mark()
            try:
                views = read_cluster(self.conn, self.layout)
            except ClusterError as exc:  # ZooKeeper away for a moment: the deadline still holds
                if time.monotonic() >= deadline:
                    raise
                log.info("waiting for convergence: %s", exc)
                self.conn.wait_connected(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            report, done = {}, True
            for name, want in sorted(versions.items()):
                v = views.get(name)
                if v is None or v.live is None:
                    report[name] = {"live": False, "want": want}
                    continue
                st = v.state
                applied = st.supervisor_version if st else None  # once its workers run from it
                rejected = st is not None and st.document is not None and st.document.version == want and \
                    st.document.status == "rejected"
                rejections = [f"{r.get('worker_id') or '-'}: {r.get('field') or '-'}: {r.get('reason')}"
                              for r in (st.rejected if st else [])]
                applied_ok = version_number(applied) >= version_number(want)
                ids = {r.split(":")[0] for r in rejections}
                runnable = sum(1 for w in v.workers if w.worker_id not in ids)
                ok = applied_ok and (not running or v.running() >= runnable)
                report[name] = {"live": True, "want": want, "applied": applied, "workers": len(v.workers),
                                "running": v.running(), "rejected": st.document.reason if rejected and st and
                                st.document else None, "rejections": rejections if applied_ok else []}
                done = done and (ok or rejected)
            if done or time.monotonic() >= deadline:
                return Convergence(done, report)
            self.wakeup.wait(seen, min(1.0, deadline - time.monotonic()))

