"""``berth cluster ps``: nodes and workers for people. Every cell is plain, escaped text: what nodes
write about themselves is untrusted, so nothing in it is read as rich markup or reaches the
terminal as a control sequence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._core.printable import printable

if TYPE_CHECKING:
    from rich.table import Table

    from .._cluster.admin import NodeView
    from .._cluster.documents import EngineReport
    from .._core.clusterconfig import ClusterSection


def cluster_rows(views: dict[str, NodeView], settings: ClusterSection | None = None,
                 drains: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """With ``settings`` (the coordinator's), each node's offer as the coordinator takes it;
    ``drains``: the nodes being drained, and why."""
    from .._cluster.capacity import capped

    nodes, workers = [], []
    drains = drains or {}
    for name, v in sorted(views.items()):
        claim = v.live.capacity if v.live else None
        cap = capped(claim, settings) if claim is not None and settings is not None else claim
        over: list[str] = []
        if claim is not None and cap is not None:
            over += [f"cpu {claim.cpu_percent}%"] if cap.cpu_percent < claim.cpu_percent else []
            over += [f"memory {claim.memory_mb} MiB"] if cap.memory_mb < claim.memory_mb else []
            over += [f"{len(claim.ports)} ports"] if len(cap.ports) < len(claim.ports) else []
        st = v.state
        reported = {w.worker_id: w for w in (st.workers if st else [])}
        nodes.append({
            "node": name, "live": v.live is not None, "host": v.live.host if v.live else None,
            "berth_version": v.live.berth_version if v.live else None,
            "capacity": {"cpu_percent": cap.cpu_percent, "memory_mb": cap.memory_mb, "ports": len(cap.ports),
                         "zones": len(cap.zones)} if cap else None,
            "used": {"cpu_percent": sum(w.cpu_percent or 0 for w in v.workers),
                     "memory_mb": sum(w.memory_mb or 0 for w in v.workers), "ports": len(v.workers)},
            "document": v.doc_version, "applied": st.applied_version if st else None,
            "document_status": st.document.status if st and st.document else None,
            "reason": (st.document.reason if st and st.document else None) or (st.problem if st else None),
            "workers": len(v.workers), "running": v.running(), "fenced": bool(st and st.fenced),
            "orphans": sorted({e.worker_id for e in (st.engine if st else [])} - {w.worker_id for w in v.workers}),
            "problems": [*v.problems, *([f"claims {', '.join(over)}: capped by the coordinator's "
                                        "cluster.node_max_*"] if over else [])],
            "draining": drains.get(name),
        })
        engine = {e.worker_id: e for e in (st.engine if st else [])}
        for w in v.workers:
            r, e = reported.get(w.worker_id), engine.get(w.worker_id)
            workers.append({"node": name, "worker_id": w.worker_id, "topology_id": w.topology_id, "port": w.port,
                            "user": w.user, "cpu_percent": w.cpu_percent, "memory_mb": w.memory_mb,
                            "numa_node": w.numa_node, "state": r.state if r else None,
                            "restarts": r.restarts if r else None, "engine": e.state if e else None,
                            "orphan": False, "note": _difference(r.state if r else None, e, st is not None)})
        named = {w.worker_id for w in v.workers}
        for wid, e in sorted(engine.items()):
            if wid in named:
                continue
            r = reported.get(wid)
            note = "no document names it" + (f"; another supervisor's (state dir {e.owner})" if e.owner else
                                             f"; this node's supervisor: {r.state}" if r else "")
            workers.append({"node": name, "worker_id": wid, "topology_id": None, "port": None, "user": None,
                            "cpu_percent": None, "memory_mb": None, "numa_node": None, "state": r.state if r else None,
                            "restarts": r.restarts if r else None, "engine": e.state, "orphan": True, "note": note})
    return nodes, workers


def _difference(state: str | None, e: EngineReport | None, reported: bool) -> str | None:
    """Where the supervisor's view of a worker and its engine's disagree (None: they agree)."""
    if not reported:
        return None  # the node never reported: "not reported" says it all
    running = e is not None and e.state in ("running", "paused")
    if state in ("running", "stalled") and not running:
        return f"the engine has it {e.state if e else 'nowhere'}"
    if state not in ("running", "stalled", "stopping", "starting") and running:
        return "the engine runs it"
    return None


def cluster_tables(nodes: list[dict[str, Any]], workers: list[dict[str, Any]]) -> list[Table]:
    from rich.table import Table
    from rich.text import Text

    def row(t: Table, *cells: Any) -> None:
        t.add_row(*(Text("-" if c is None else printable(str(c))) for c in cells))

    nt = Table(title="nodes")
    for col in ("node", "live", "host", "cpu used/offered", "MiB used/offered", "ports", "document", "applied",
                "workers running", "note"):
        nt.add_column(col)
    for n in nodes:
        cap, used = n["capacity"], n["used"]
        note = "; ".join([*(["FENCED"] if n["fenced"] else []),
                          *([f"DRAINING ({n['draining']}): remove-node --drain runs, or was cut short (run it "
                             "again to finish)"] if n["draining"] else []),
                          *([n["reason"]] if n["reason"] else []),
                          *([f"{len(n['orphans'])} orphan(s) on its engine"] if n["orphans"] else []),
                          *n["problems"]])
        row(nt, n["node"], "yes" if n["live"] else "NO", n["host"],
            f"{used['cpu_percent']}/{cap['cpu_percent']}" if cap else f"{used['cpu_percent']}/?",
            f"{used['memory_mb']}/{cap['memory_mb']}" if cap else f"{used['memory_mb']}/?",
            f"{used['ports']}/{cap['ports']}" if cap else f"{used['ports']}/?",
            n["document"], n["applied"] if n["applied"] != n["document"] else "= document",
            f"{n['running']}/{n['workers']}", note or None)
    wt = Table(title="workers by node (state: its supervisor's; engine: its container's)")
    for col in ("node", "worker", "topology", "port", "user", "cpu %", "MiB", "numa", "state", "engine", "restarts",
                "note"):
        wt.add_column(col)
    for w in workers:
        note = ("ORPHAN: " if w["orphan"] else "≠ " if w["note"] else "") + (w["note"] or "")
        row(wt, w["node"], w["worker_id"], w["topology_id"], w["port"], w["user"], w["cpu_percent"], w["memory_mb"],
            w["numa_node"], w["state"] or ("-" if w["orphan"] else "not reported"), w["engine"] or "none",
            w["restarts"], note or None)
    return [nt, wt]
