"""python -m bench — berth against a Storm-style launcher, the raw Docker SDK and bare runc.

    python -m bench all [--quick] [--json] [--engine private|shared|URL] [--out DIR]
    python -m bench launch --launcher berth -n 30        sequential launch latency + exit detection
    python -m bench throughput --launcher sdk --concurrent 50
    python -m bench watch --launcher storm_style --watch 100 --idle 30
    python -m bench memory --launcher berth
    python -m bench profile -n 15                         berth's Engine API calls, step by step
    python -m bench render [--from FILE] [--out DIR]      benchmarks.md and plots again from saved results
    python -m bench cleanup                               remove whatever any bench run left (none may be running)

Needs root (it starts dockerd, runs runc and chowns worker directories). ``all`` writes
benchmarks.md and bench-*.png into --out (docs/ for a full run, bench/out/ otherwise) and the
raw results as JSON into bench/out/. With ``--json`` the only thing on stdout is one JSON object:
one key per launcher, each with the nine fields (null where not measured).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._common import FIELDS, LAUNCHERS, REPO, SEQUENTIAL_ONLY, BenchError, Stopping

COMMANDS = ("all", "launch", "throughput", "watch", "memory", "profile", "render", "cleanup")
PHASES = {"all": ("sequential", "burst", "memory", "watch", "output"), "launch": ("sequential",), "profile": (),
          "throughput": ("burst",), "watch": ("watch",), "memory": ("memory",), "render": (), "cleanup": ()}
FULL = {"n": 30, "warmup": 2, "concurrent": 50, "watch": 100, "idle": 30.0, "settle": 0.5, "mem_iters": 2000,
        "berth_mem_iters": 300, "stats_iters": 5}
QUICK = {"n": 10, "warmup": 1, "concurrent": 50, "watch": 20, "idle": 5.0, "settle": 0.3, "mem_iters": 500,
         "berth_mem_iters": 100, "stats_iters": 2}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=COMMANDS)
    ap.add_argument("--launcher", "--launchers", dest="launchers", action="append",
                    help=f"one of {', '.join(LAUNCHERS)} (repeat, or comma-separate; default: all four)")
    ap.add_argument("--quick", action="store_true", help="small sizes and a 5 s idle window (a few minutes)")
    ap.add_argument("-n", "--n", type=int, help="sequential launches per launcher (full: 30, quick: 10)")
    ap.add_argument("--warmup", type=int, help="discarded warm-up launches per launcher (full: 2, quick: 1)")
    ap.add_argument("--concurrent", type=int, help="workers launched at once (50)")
    ap.add_argument("--watch", type=int, help="running workers for the watching cost (full: 100, quick: 20)")
    ap.add_argument("--idle", type=float, help="idle window in seconds for the CPU reading (full: 30, quick: 5)")
    ap.add_argument("--settle", type=float, help="seconds between a worker's start and its release (0.5)")
    ap.add_argument("--engine", default="private", help="private (default), shared, or an engine URL")
    ap.add_argument("--run-id", type=_run_id, help="name this run's containers, dirs and shim bnch-<ID>-… "
                                                    "(default: random; 6 hex digits)")
    ap.add_argument("--keep-engine", action="store_true", help="leave a private engine the bench started running")
    ap.add_argument("--rootfs", default=None, help="unpacked image for runc (/var/lib/berth-dev/rootfs/python)")
    ap.add_argument("--image-dir", default=None, help=argparse.SUPPRESS)  # the watch child's berth_runc image
    ap.add_argument("--out", type=Path, help="where benchmarks.md and the plots go")
    ap.add_argument("--json", action="store_true", help="print only the JSON results on stdout")
    ap.add_argument("--from", dest="source", type=Path, help="render: saved results (bench/out/results-latest.json)")
    # internal: one watching-cost measurement in a process of its own
    ap.add_argument("--child-url", help=argparse.SUPPRESS)
    ap.add_argument("--child-run", help=argparse.SUPPRESS)
    ap.add_argument("--child-run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--child-pidfile", action="append", default=[], help=argparse.SUPPRESS)
    return ap


def _launchers(args: argparse.Namespace) -> list[str]:
    if not args.launchers:
        return list(LAUNCHERS)
    names = [n.strip() for item in args.launchers for n in item.split(",") if n.strip()]
    bad = [n for n in names if n not in LAUNCHERS]
    if bad:
        raise BenchError(f"unknown launcher(s) {', '.join(bad)}; choose from {', '.join(LAUNCHERS)}")
    return [n for n in LAUNCHERS if n in names]


def _run_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{6}", text):
        raise argparse.ArgumentTypeError(f"must be 6 hex digits, got {text!r}")
    return text


def _params(args: argparse.Namespace) -> dict[str, Any]:
    base = dict(QUICK if args.quick else FULL)
    for key in ("n", "warmup", "concurrent", "watch", "idle", "settle"):
        v = getattr(args, key)
        if v is not None:
            base[key] = v
    if base["n"] < 1 or base["concurrent"] < 1 or base["watch"] < 1 or base["idle"] < 0:
        raise BenchError("-n, --concurrent and --watch must be at least 1, --idle not negative")
    base["quick"] = args.quick
    base["reduced"] = any(base[k] != FULL[k] for k in ("n", "concurrent", "watch", "idle"))
    return base


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console

    to_err = bool(args.json or args.child_run)
    tty = (sys.stderr if to_err else sys.stdout).isatty()
    console = Console(stderr=to_err, width=None if tty else 160)
    args.argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _on_term)
    # Also where SIGINT was ignored by whoever started us (a shell's background job): an
    # interrupted bench must still stop and clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.child_run:
            return _child(args)
        if args.command == "render":
            return _render(args, console)
        if os.geteuid() != 0:
            raise BenchError("the benchmark needs root (dockerd, runc, chown of worker directories)")
        if args.command == "cleanup":
            return _cleanup(args, console)
        if args.command == "profile":
            return _profile(args, console)
        return _run(args, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the bench made has been removed[/yellow]")
        return 130
    except BenchError as exc:
        console.print(f"[red]bench: {exc}[/red]")
        return 1


def _render(args: argparse.Namespace, console: Any) -> int:
    from . import _report

    source = args.source or REPO / "bench" / "out" / "results-latest.json"
    try:
        result = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read saved results {source}: {exc}") from None
    p = result["params"]
    out_dir = args.out or (REPO / "bench" / "out" if p.get("quick") or p.get("reduced") else REPO / "docs")
    out_dir.mkdir(parents=True, exist_ok=True)
    result["targets"] = _report.targets(result["summary"], result["extra"], result.get("output"))
    plots = _report.plot(result, out_dir)
    (out_dir / "benchmarks.md").write_text(_report.markdown(result, plots))
    console.print(f"wrote {out_dir / 'benchmarks.md'} and {', '.join(plots)} from {source}")
    return 0


def _cleanup(args: argparse.Namespace, console: Any) -> int:
    from ._common import PRIVATE_URL, SHARED_URL
    from ._env import sweep

    urls = [args.engine] if "://" in args.engine else [PRIVATE_URL, SHARED_URL]
    total = 0
    for url in urls:
        sock = url.removeprefix("unix://")
        if url.startswith("unix://") and not os.path.exists(sock):
            continue
        total += sweep(url, None, console.print)
    sweep(None, None, console.print)
    console.print(f"cleanup: removed {total} container(s), every bench run directory and runc container")
    return 0


def _profile(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from berth import HostFacts

    from . import _env
    from ._launchers import BerthLauncher, make_launcher
    from ._measure import Ids
    from ._profile import profile_berth

    n = args.n or 15
    run = getattr(args, "run_id", None) or uuid.uuid4().hex[:6]
    engine = _env.open_engine(args.engine, console.print)
    launcher = None
    try:
        _env.ensure_users()
        run_dir = _env.new_run_dir(run)
        launcher = make_launcher("berth", run_dir, run, engine.url, HostFacts.probe(), "")
        assert isinstance(launcher, BerthLauncher)
        console.print(f"profiling berth over {n} launches on {engine.url}")
        prof = profile_berth(launcher, Ids(run), n, engine.url)
    finally:
        Stopping.event.set()
        if launcher is not None:
            launcher.close()
        _env.sweep(engine.url, run, console.print)
        if not args.keep_engine:
            engine.stop_if_ours()
        Stopping.event.clear()
    if args.json:
        print(json.dumps(prof, indent=1))
        return 0
    t = Table(title=f"berth's Engine API requests (launch call p50 {prof['launch_call_p50_ms']} ms, "
                    f"memory_usage p50 {prof['memory_usage_p50_us']} µs)")
    for col in ("step", "request", "per call", "p50 ms", "mean ms"):
        t.add_column(col, justify="left" if col in ("step", "request") else "right")
    for r in prof["requests"]:
        t.add_row(r["step"], r["request"], f"{r['per_call']:g}", f"{r['p50_ms']:g}", f"{r['mean_ms']:g}")
    console.print(t)
    console.print("exit, p50 ms after the worker's last instruction: " +
                  ", ".join(f"{k.removesuffix('_ms')} {v:g}" for k, v in prof["exit_split_p50"].items()))
    return 0


# ------------------------------------------------------------------------------- the run


def _run(args: argparse.Namespace, console: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from berth import HostFacts

    from . import _env, _measure, _report
    from . import output as _output
    from ._common import DEFAULT_ROOTFS
    from ._launchers import Launcher, make_launcher

    names = _launchers(args)
    params = _params(args)
    phases = PHASES[args.command]
    params["image"] = "berth/python:latest"
    started = time.monotonic()
    drift0 = time.time_ns() - time.monotonic_ns()
    run = getattr(args, "run_id", None) or uuid.uuid4().hex[:6]
    rootfs = args.rootfs or DEFAULT_ROOTFS
    say = console.print
    engine = _env.open_engine(args.engine, say)
    machine = _env.machine(engine.url)
    launchers: dict[str, Launcher] = {}
    raw: dict[str, dict[str, Any]] = {n: {} for n in names}
    output: dict[str, Any] | None = None
    try:
        _env.ensure_users()
        run_dir = _env.new_run_dir(run)
        merged = rootfs
        if {"runc", "runc_noseccomp", "berth_runc"} & set(names):
            _env.ensure_rootfs(rootfs, say)
        if {"runc", "runc_noseccomp"} & set(names):
            merged = _env.mount_runc_rootfs(run_dir, rootfs)
        host = HostFacts.probe()
        ids = _measure.Ids(run)
        say(f"bench run {run}: engine {engine.url} ({engine.kind}), launchers {', '.join(names)}; "
            f"phases {', '.join(phases)}" + (" [quick]" if args.quick else ""))
        in_process = [p for p in phases if p != "watch"]
        if in_process:
            launchers = {n: make_launcher(n, run_dir, run, engine.url, host, merged, rootfs) for n in names}
        exits = {n: _measure.Exits() for n in names}
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            if "sequential" in phases:
                total = (params["n"] + params["warmup"]) * len(names)
                task = progress.add_task("sequential launches", total=total)
                seq = _measure.sequential(launchers, exits, ids, params["n"], params["warmup"], params["settle"],
                                          lambda _n: progress.advance(task))
                for n in names:
                    raw[n]["sequential"] = [asdict(s) for s in seq[n]]
            if "burst" in phases:
                task = progress.add_task(f"{params['concurrent']} at once", total=len(names))
                for n in (n for n in names if n not in SEQUENTIAL_ONLY):
                    progress.update(task, description=f"{params['concurrent']} at once: {n}")
                    raw[n]["burst"] = asdict(_measure.burst(launchers[n], exits[n], ids, params["concurrent"]))
                    progress.advance(task)
            if "memory" in phases:
                task = progress.add_task("memory readings", total=len(names))
                for n in (n for n in names if n not in SEQUENTIAL_ONLY):
                    iters = {"sdk": params["stats_iters"], "berth": params["berth_mem_iters"]}.get(
                        n, params["mem_iters"])
                    raw[n]["memory"] = asdict(_measure.memory(launchers[n], exits[n], ids, iters))
                    progress.advance(task)
            for lau in launchers.values():
                lau.close()
            launchers = {}
            if "watch" in phases:
                task = progress.add_task("watching cost", total=len(names) * params["watch"])
                for n in (n for n in names if n not in SEQUENTIAL_ONLY):
                    raw[n]["watch"] = _watch_in_child(n, params, engine, run, run_dir, merged, rootfs, progress,
                                                      task)
            if "output" in phases and "berth_runc" in names:  # the shim draining 100 MB/s
                output = _output.measure(run_dir, run, rootfs, quick=params["quick"], say=say)
    finally:
        Stopping.event.set()
        for lau in launchers.values():
            try:
                lau.close()
            except Exception as exc:  # cleanup goes on whatever one launcher says
                say(f"[yellow]closing {lau.name}: {exc}[/yellow]")
        _finish_launch_threads()
        _env.sweep(engine.url, run, say)
        if not args.keep_engine:
            engine.stop_if_ours()
        Stopping.event.clear()
    duration = time.monotonic() - started
    drift_us = abs((time.time_ns() - time.monotonic_ns()) - drift0) / 1e3
    summary: dict[str, dict[str, Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for n in names:
        summary[n], extra[n] = _report.summarize(n, raw[n])
    result: dict[str, Any] = {
        "command": f"python -m bench {args.argv_text}", "machine": machine,
        "params": params, "engine": f"{engine.kind} ({engine.url})", "run": run,
        "duration_s": duration, "clock_drift_us": drift_us, "summary": summary, "extra": extra, "raw": raw,
        "output": output,
    }
    result["targets"] = _report.targets(summary, extra, output)
    out_json = {n: summary.get(n, dict.fromkeys(FIELDS)) for n in LAUNCHERS}
    save = REPO / "bench" / "out"
    save.mkdir(parents=True, exist_ok=True)
    (save / f"results-{run}.json").write_text(json.dumps(result, indent=1))
    (save / "results-latest.json").write_text(json.dumps(result, indent=1))
    title = f"berth bench ({'quick, ' if args.quick else ''}{duration:.0f} s)"
    console.print(_report.console_table(summary, params, title))
    for t, v, ok in result["targets"]:
        mark = "[dim]n/a[/dim]" if ok is None else ("[green]met[/green]" if ok else "[red]not met[/red]")
        console.print(f"  {mark}  {t}: {v}")
    if params["quick"] and "watch" in phases:
        console.print(f"  [dim]quick mode: idle window shortened to {params['idle']:g} s, "
                      f"{params['watch']} workers watched[/dim]")
    if args.command == "all":
        out_dir = args.out or (REPO / "bench" / "out" if params["quick"] or params["reduced"] else REPO / "docs")
        out_dir.mkdir(parents=True, exist_ok=True)
        plots = _report.plot(result, out_dir)
        (out_dir / "benchmarks.md").write_text(_report.markdown(result, plots))
        console.print(f"wrote {out_dir / 'benchmarks.md'} and {', '.join(plots)} beside it; raw results "
                      f"{save / f'results-{run}.json'}")
    if args.json:
        print(json.dumps(out_json, indent=1))
    return 0


def _finish_launch_threads() -> None:
    """Launch threads still running after an interrupt: give them a moment to return."""
    deadline = time.monotonic() + 30
    for t in threading.enumerate():
        if t is threading.current_thread() or not t.name.startswith("bench-launch"):
            continue
        t.join(timeout=max(0.0, deadline - time.monotonic()))


def _watch_in_child(name: str, params: dict[str, Any], engine: Any, run: str, run_dir: Path, rootfs: str,
                    image_dir: str, progress: Any, task: Any) -> dict[str, Any]:
    """The watching cost of one launcher, measured in a fresh Python process (its own threads,
    RSS and CPU, nothing left from the other launchers)."""
    cmd = [sys.executable, "-m", "bench", "watch", "--launcher", name, "--watch", str(params["watch"]),
           "--idle", str(params["idle"]), "--rootfs", rootfs, "--image-dir", image_dir, "--child-url", engine.url,
           "--child-run", run,
           "--child-run-dir", str(run_dir)]
    for pf in engine.pidfiles:
        cmd += ["--child-pidfile", pf]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    done = 0
    try:
        for line in proc.stdout:
            if line.startswith("P "):
                n = int(line.split()[1].split("/")[0])
                progress.update(task, description=f"watching cost: {name}", advance=n - done)
                done = n
            elif line.startswith("R "):
                result = json.loads(line[2:])
        rc = proc.wait()
    except BaseException:
        # A Ctrl-C at the terminal reached it too; a SIGINT/SIGTERM sent to this process alone did not.
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)  # it removes its workers; the sweep after it catches the rest
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if rc != 0 or result is None:
        raise BenchError(f"watching cost of {name}: the measuring process failed (exit {rc})")
    if "error" in result:
        raise BenchError(f"watching cost of {name}: {result['error']}")
    return result


def _child(args: argparse.Namespace) -> int:
    from berth import HostFacts

    from . import _measure
    from ._launchers import make_launcher

    name = _launchers(args)[0]
    params = _params(args)
    host = HostFacts.probe()
    run_dir = Path(args.child_run_dir)

    def make() -> Any:
        return make_launcher(name, run_dir, args.child_run, args.child_url, host, args.rootfs, args.image_dir or "")

    try:
        w = _measure.watch_child(make, params["watch"], params["idle"], _measure.Ids(args.child_run),
                                 args.child_pidfile, tick=lambda s: print(f"P {s}", flush=True))
    except BenchError as exc:
        print("R " + json.dumps({"error": str(exc)}), flush=True)
        return 1
    print("R " + json.dumps(w.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
