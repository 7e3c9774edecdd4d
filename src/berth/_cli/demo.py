"""``berth demo``: a small topology run end to end on the real engine (or real runc), narrated.

It shows what a node operator cares about, in order: workers of two users start with
different limits, do real work, one runs out of memory and is reported as OOM-killed, one is
stopped with a grace period, and every exit code is the worker's own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .._core.spec import WorkerSpec
from .._core.timefmt import seconds_between
from .._exceptions import BerthError, LaunchError
from .._node.node import Node
from .._runtimes.base import ExitRecord
from .._runtimes.registry import plugin
from .views import ps_table

WORKER = r"""
import json, os, signal, sys, time
art, name = sys.argv[1], sys.argv[2]
state = {"worker": name, "checked": 0, "primes": 0, "uid": os.getuid(), "groups": sorted(os.getgroups())}
def flush(final=False):
    tmp = os.path.join(art, ".progress.json")
    with open(tmp, "w") as f:
        json.dump({**state, "final": final}, f)
    os.replace(tmp, os.path.join(art, "progress.json"))
def on_term(*_):
    flush(final=True)
    print(f"{name}: SIGTERM, saved {state['primes']} primes, exiting cleanly", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print(f"{name}: started as uid {os.getuid()}", flush=True)
hog, n, last = [], 2, 0.0
while not os.path.exists("stop"):
    for _ in range(2000):
        if all(n % p for p in range(2, int(n ** 0.5) + 1)):
            state["primes"] += 1
        n += 1
    state["checked"] = n - 2
    if os.path.exists("hog"):
        hog.append(bytearray(16 << 20))
    if time.monotonic() - last > 0.25:
        flush()
        last = time.monotonic()
flush(final=True)
print(f"{name}: asked to stop, done", flush=True)
"""

DEMO_WORKERS = (
    # worker id, topology, port, user, cpu %, memory MiB, cores
    ("wc-a1", "wordcount-1", 6700, "berth-alice", 50, 96, None),
    ("wc-a2", "wordcount-1", 6701, "berth-alice", 100, 64, None),
    ("sess-b1", "sessions-7", 6702, "berth-bob", 25, 128, (0,)),
)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll a state another process owns (the demos' workers, agents and coordinator), bounded."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BerthError("demo", f"timed out waiting for {what}")
        time.sleep(0.1)


def exit_table(records: list[ExitRecord]) -> Table:
    t = Table(title="how the workers ended")
    for col in ("worker", "exit code", "signal", "OOM-killed", "ended", "ran"):
        t.add_column(col)
    for r in records:
        secs = seconds_between(r.started_at, r.finished_at)
        ran = "-" if secs is None else f"{secs:.1f}s"
        t.add_row(r.worker_id, str(r.exit_code), r.signal_name or "-", "YES" if r.oom_killed else "no", r.brief(), ran)
    return t


def run_demo(node: Node, console: Console) -> int:
    cfg = node.config
    console.rule("[bold]berth demo")
    where = plugin(cfg.node.runtime).describe(cfg)
    console.print(f"node [bold]{cfg.node.name}[/], {where}, "
                  f"local dir {cfg.node.local_dir}, image {cfg.images.default}")
    ids = [w[0] for w in DEMO_WORKERS]
    for w in node.ps():  # a previous demo that was interrupted
        if w.worker_id in ids:
            node.cleanup(w.worker_id)
    ended: dict[str, ExitRecord] = {}

    def wait(wid: str) -> ExitRecord:
        ended[wid] = node.wait(wid, timeout=120)
        return ended[wid]

    paths: dict[str, tuple[Path, Path]] = {}
    audits_ok = True
    try:
        for wid, topo, port, user, cpu, mem, cores in DEMO_WORKERS:
            spec = WorkerSpec(worker_id=wid, topology_id=topo, port=port, user=user, command=("python3", "-c", WORKER),
                              cpu_percent=cpu, memory_mb=mem, cores=cores, env={"WORKER_NAME": wid})
            art_dir = node.plan(spec).layout.artifacts
            spec = spec.model_copy(update={"command": ("python3", "-c", WORKER, art_dir, wid)})
            try:
                h = node.launch(spec, on_exit=lambda rec: None)
            except LaunchError as exc:
                console.print(f"[red]launch of {wid} failed: {exc}")
                return 1
            paths[wid] = (Path(h.plan.workdir), Path(art_dir))
            pin = f", pinned to cpu {h.plan.resources.cpuset_cpus}" if cores else ""
            console.print(f"launched [bold]{wid}[/] as {user} (topology {topo}, port {port}): "
                          f"{cpu}% cpu, {mem} MiB{pin} -> container {h.container_id[:12]}")
        def checked(art: Path) -> int:
            try:
                return int(json.loads((art / "progress.json").read_text())["checked"])
            except (OSError, ValueError, KeyError):
                return 0

        with console.status("waiting for every worker to check 100,000 numbers (see its artifacts dir)…"):
            wait_until(lambda: all(checked(a) >= 100_000 for _, a in paths.values()), "progress", timeout=60)
        console.print(ps_table(node))
        from .._node.audit import audit_worker

        for wid in paths:
            report = audit_worker(node, wid)
            audits_ok = audits_ok and report.ok
            bad = ", ".join(c.name for c in report.failed) or "none"
            console.print(f"  berth audit {wid}: {'PASS' if report.ok else 'FAIL'} — {len(report.checks)} checks "
                          f"read from /proc and the cgroup on the host (failed: {bad})")
        for wid, (_, art) in paths.items():
            p = json.loads((art / "progress.json").read_text())
            console.print(f"  {wid}: uid {p['uid']} groups {p['groups']}, checked {p['checked']} numbers, "
                          f"{p['primes']} primes  ({art}/progress.json)")

        console.rule("memory limit")
        console.print("asking [bold]wc-a2[/] (64 MiB) to allocate 16 MiB per step until it no longer fits…")
        (paths["wc-a2"][0] / "hog").touch()
        rec = wait("wc-a2")
        console.print(f"wc-a2 ended: exit code {rec.exit_code}, signal {rec.signal_name}, "
                      f"[bold]{'OOM-killed' if rec.oom_killed else 'not OOM'}[/] "
                      "(from the cgroup's OOM-kill count, not from the code 137)")

        console.rule("kill with a grace period")
        console.print("killing [bold]sess-b1[/] with a 5 s grace: SIGTERM now, SIGKILL only if it ignores it…")
        node.kill("sess-b1", grace_s=5)
        rec = wait("sess-b1")
        console.print(f"sess-b1 ended: exit code {rec.exit_code} (its own: it saved its state on SIGTERM)")

        console.rule("normal end")
        (paths["wc-a1"][0] / "stop").touch()
        wait("wc-a1")
        console.print(exit_table([ended[w] for w in ids]))
        for wid, (_, art) in paths.items():
            p = json.loads((art / "progress.json").read_text())
            console.print(f"  {wid}: final={p['final']}, {p['primes']} primes -> {art}/progress.json")
            console.print(f"    logs: {b''.join(node.logs(wid, tail=1)).decode(errors='replace').strip()}")
    finally:
        for wid in ids:
            try:
                node.cleanup(wid)
            except BerthError as exc:
                console.print(f"[yellow]cleanup of {wid}: {exc}")
    left = [w.worker_id for w in node.ps() if w.worker_id in ids]
    console.print(f"cleaned up: containers and worker dirs removed ({len(left)} left); artifacts kept under "
                  f"{cfg.node.log_dir}/workers-artifacts")
    oom, done = ended.get("wc-a2"), ended.get("wc-a1")
    ok = bool(oom and oom.oom_killed and done and done.exit_code == 0 and audits_ok)
    return 0 if ok and not left else 1

