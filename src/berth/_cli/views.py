"""Views of a node for people: the ``ps`` rows and table, shared by the CLI and the demo. Cells are
plain, escaped text (``printable``): labels, names and errors are not all berth's own words."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._core.printable import printable
from .._core.timefmt import parse_time
from .._exceptions import BerthError
from .._runtimes.base import WorkerState, WorkerStatus
from .._service.assignments import Rejection

if TYPE_CHECKING:
    from rich.table import Table

    from .._node.node import Node


def uptime(w: WorkerState) -> str:
    if not w.started_at:
        return "-"
    start = parse_time(w.started_at)
    end = parse_time(w.finished_at) if w.finished_at and not w.running else datetime.now(UTC)
    secs = max(0, int((end - start).total_seconds()))
    if secs >= 3600:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m{secs % 60:02d}s"
    return f"{secs // 60}m{secs % 60:02d}s"


def ps_rows(node: Node) -> list[dict[str, Any]]:
    rows = []
    for w in node.ps(detail=True):
        mem = None
        how: dict[str, Any] = {"signal": None, "exact": None, "status_lost": False, "how": None}
        if w.running:
            try:
                mem = node.memory_usage(w.worker_id)
            except BerthError:
                mem = None
        elif w.state == WorkerStatus.EXITED:
            try:
                rec = node.exit_record(w.worker_id)
            except BerthError:
                rec = None
            if rec is not None:
                how = {"signal": rec.signal, "exact": rec.exact, "status_lost": rec.status_lost, "how": rec.brief()}
        rows.append({"worker_id": w.worker_id, "topology_id": w.topology_id, "port": w.port, "user": w.user,
                     "image": w.image, "state": w.state, "exit_code": w.exit_code, "oom_killed": w.oom_killed,
                     "oom_victim": w.oom_victim, "main_stopped": w.main_stopped, "memory_bytes": mem,
                     "started_at": w.started_at, "finished_at": w.finished_at, "uptime": uptime(w), **how})
    return rows


SUPERVISOR_KEYS = ("restarts", "failures", "next_start_in_s", "last_exit", "last_error", "assignment_version")


def _empty_row(wid: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    return {"worker_id": wid, "topology_id": spec.get("topology_id", ""), "port": spec.get("port", 0),
            "user": spec.get("user", ""), "image": spec.get("image") or "", "state": "-", "exit_code": None,
            "oom_killed": False, "oom_victim": None, "main_stopped": False, "memory_bytes": None, "started_at": None,
            "finished_at": None, "uptime": "-", "signal": None, "exact": None, "status_lost": False, "how": None}


def with_supervisor(rows: list[dict[str, Any]], workers: dict[str, dict[str, Any]],
                    rejected: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """``ps`` rows with what a running supervisor knows of each worker, rows for assigned workers
    that have no container now (backoff, failed, rejected), and a ``rejection`` on each worker
    whose latest assignment entry was refused (a row of its own if it has no other)."""
    out = []
    for r in rows:
        w = workers.get(r["worker_id"])
        out.append({**r, "supervisor_state": w["state"] if w else "unassigned",
                    **{k: (w or {}).get(k) for k in SUPERVISOR_KEYS}})
    seen = {r["worker_id"] for r in rows}
    for wid, w in sorted(workers.items()):
        if wid not in seen:
            out.append({**_empty_row(wid, w.get("spec") or {}), "supervisor_state": w["state"],
                        **{k: w.get(k) for k in SUPERVISOR_KEYS}})
    by_id = {r["worker_id"]: r for r in out}
    for rej in rejected:
        line = rejection_line(rej).split(": ", 1)[1]
        row = by_id.get(rej.get("worker_id"))
        if row is None:
            row = {**_empty_row(rej.get("worker_id"), {}), "supervisor_state": "rejected",
                   **dict.fromkeys(SUPERVISOR_KEYS)}
            out.append(row)
        row["rejection"] = line
    return out


def rejection_line(r: dict[str, Any]) -> str:
    """One line, escaped: sources are file names, reasons quote what the entry said. A worker
    waiting for the node's capacity is not rejected for ever: ``waiting for capacity:``."""
    rej = Rejection(r["source"], r.get("index"), r.get("worker_id"), r.get("field"), r["reason"],
                    bool(r.get("retried")))
    return printable(f"{'waiting for capacity' if rej.retried else 'rejected'}: {rej}")


def _last(r: dict[str, Any]) -> str:
    ex = r.get("last_exit")
    if ex:
        if ex.get("status_lost"):
            return "status lost"
        sig = f" sig {ex['signal']}" if ex.get("signal") else ""
        return f"{ex['exit_code']}{sig}{' OOM' if ex.get('oom_killed') else ''}"
    return "-"


def ps_table(node: Node, rows: list[dict[str, Any]] | None = None) -> Table:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(printable(f"berth workers on {node.config.node.name}")))
    rows = rows if rows is not None else ps_rows(node)
    supervised = any("supervisor_state" in r for r in rows)
    cols = ["worker", "topology", "port", "user", "image", "state", "ended", "OOM", "memory", "uptime"]
    extra = ["supervisor", "restarts", "failures", "next in", "last exit"]  # last errors: under it (ps_notes)
    widest = max((len(r["worker_id"] or "-") for r in rows), default=6)
    for col in [*cols, *extra] if supervised else cols:
        t.add_column(col, justify="right" if col in ("port", "memory", "restarts", "failures") else "left",
                     no_wrap=col == "worker", min_width=widest if col == "worker" else None)
    for r in rows:
        mem = f"{r['memory_bytes'] / 2**20:.1f} MiB" if r["memory_bytes"] is not None else "-"
        state = f"{r['state']}, PID 1 stopped" if r.get("main_stopped") else r["state"]
        cells = [r["worker_id"] or "-", r["topology_id"], str(r["port"] or ""), r["user"], r["image"], state,
                 r.get("how") or ("-" if r["exit_code"] is None else str(r["exit_code"])),
                 {"worker": "yes", "child": "a child"}.get(r.get("oom_victim") or "", ""),
                 mem, r["uptime"]]
        if supervised:
            nxt = r.get("next_start_in_s")
            cells += [r.get("supervisor_state", "-"), str(r.get("restarts") or 0), str(r.get("failures") or 0),
                      "-" if nxt is None else f"{nxt:.1f}s", _last(r)]
        t.add_row(*(Text(printable(c)) for c in cells))  # labels, errors: others' text, never markup
    return t


def ps_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Each worker's last error, one line each under the table: in a column of the table, a long
    one was squeezed to one word per line, even at 220 columns."""
    return [printable(f"{r['worker_id']}: last error: {r['last_error']}") for r in rows if r.get("last_error")]
