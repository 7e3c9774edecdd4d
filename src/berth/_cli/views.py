"""Views of a node for people: the ``ps`` rows and table, shared by the CLI and the demo."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._core.timefmt import parse_time
from .._exceptions import BerthError
from .._runtimes.base import ExitRecord, WorkerState, WorkerStatus

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


def ended(rec: ExitRecord) -> str:
    """How a worker ended, in ``ps``: where the runtime saw the raw status, "exited 137" and
    "killed by SIGKILL" are different words; where it did not, the code is shown with the signal
    it may stand for."""
    if rec.status_lost:
        return "status lost"
    if rec.signal is not None and rec.exact:
        text = f"killed by {rec.signal_name}" + (", core dumped" if rec.core_dumped else "")
    elif rec.signal is not None:
        text = f"exit code {rec.exit_code} ({rec.signal_name}?)"
    else:
        text = f"exited {rec.exit_code}"
    if rec.oom_killed:
        text += ", out of memory"
    elif rec.oom_victim == "child":
        text += ", a child out of memory"
    return text


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
                how = {"signal": rec.signal, "exact": rec.exact, "status_lost": rec.status_lost, "how": ended(rec)}
        rows.append({"worker_id": w.worker_id, "topology_id": w.topology_id, "port": w.port, "user": w.user,
                     "image": w.image, "state": w.state, "exit_code": w.exit_code, "oom_killed": w.oom_killed,
                     "oom_victim": w.oom_victim, "main_stopped": w.main_stopped, "memory_bytes": mem,
                     "started_at": w.started_at, "finished_at": w.finished_at, "uptime": uptime(w), **how})
    return rows


def ps_table(node: Node, rows: list[dict[str, Any]] | None = None) -> Table:
    from rich.table import Table

    t = Table(title=f"berth workers on {node.config.node.name}")
    rows = rows if rows is not None else ps_rows(node)
    supervised = any("supervisor_state" in r for r in rows)
    cols = ["worker", "topology", "port", "user", "image", "state", "ended", "OOM", "memory", "uptime"]
    for col in [*cols, "supervisor"] if supervised else cols:
        t.add_column(col, justify="right" if col in ("port", "memory") else "left")
    for r in rows:
        mem = f"{r['memory_bytes'] / 2**20:.1f} MiB" if r["memory_bytes"] is not None else "-"
        state = f"{r['state']}, PID 1 stopped" if r.get("main_stopped") else r["state"]
        cells = [r["worker_id"], r["topology_id"], str(r["port"] or ""), r["user"], r["image"], state,
                 r.get("how") or ("-" if r["exit_code"] is None else str(r["exit_code"])),
                 {"worker": "yes", "child": "a child"}.get(r.get("oom_victim") or "", ""),
                 mem, r["uptime"]]
        t.add_row(*cells, r.get("supervisor_state", "-")) if supervised else t.add_row(*cells)
    return t
