"""Results: the nine numbers per launcher, the targets, the console table, Markdown and plots."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ._common import FIELDS, LAUNCHERS, REPO, percentile

TITLES = {"berth": "berth", "berth_runc": "berth on runc", "storm_style": "Storm-style", "sdk": "Docker SDK",
          "runc": "bare runc", "runc_noseccomp": "bare runc, no seccomp"}
COLORS = {"berth": "#1f77b4", "berth_runc": "#9467bd", "storm_style": "#d62728", "sdk": "#2ca02c",
          "runc": "#7f7f7f", "runc_noseccomp": "#bcbd22"}


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def summarize(name: str, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The nine fields (null where not measured) and the extra numbers, from one launcher's raw data."""
    s: dict[str, Any] = dict.fromkeys(FIELDS)
    x: dict[str, Any] = {}
    seq = raw.get("sequential")
    if seq:
        launch = [p["launch_ms"] for p in seq]
        exits = [p["exit_ms"] for p in seq]
        s["launch_p50_ms"] = _r(percentile(launch, 50))
        s["launch_p90_ms"] = _r(percentile(launch, 90))
        s["exit_detect_p50_ms"] = _r(percentile(exits, 50))
        x["launch_min_ms"] = _r(min(launch))
        x["launch_call_p50_ms"] = _r(percentile([p["call_ms"] for p in seq], 50))
        x["exit_detect_p90_ms"] = _r(percentile(exits, 90))
        x["samples"] = len(seq)
    b = raw.get("burst")
    if b:
        s["throughput_50_s"] = _r(b["total_s"], 3)
        x["burst_n"] = len(b["running_at_s"])
        x["burst_calls_s"] = _r(b["calls_s"], 3)
        x["burst_first_running_s"] = _r(b["running_at_s"][0], 3)
        x["burst_exit_p50_ms"] = _r(percentile(b["exit_ms"], 50))
        x["burst_exit_max_ms"] = _r(max(b["exit_ms"])) if b["exit_ms"] else None
    w = raw.get("watch")
    if w:
        last = w["ramp"][-1]
        s["threads_100"] = last["threads"]
        s["children_100"] = last["children"]
        s["rss_100_mb"] = last["rss_mb"]
        s["idle_cpu_s_100"] = w["idle_cpu_s"]
        x["watch_n"] = last["workers"]
        x["idle_s"] = w["idle_s"]
        x["pss_100_mb"] = last["pss_mb"]
        x["helper_threads_100"] = last["helper_threads"]
        x["launcher_rss_mb"] = w["self_rss_mb"]
        if w.get("monitor_rss_mb") is not None:
            x["monitor_rss_mb"] = w["monitor_rss_mb"]
        x["baseline_rss_mb"] = w["baseline_rss_mb"]
        x["engine_idle_cpu_s"] = w["engine_idle_cpu_s"]
        first = w["ramp"][0]
        x["threads_first"] = first["threads"]
        x["children_first"] = first["children"]
        x["first_n"] = first["workers"]
    m = raw.get("memory")
    if m:
        s["memory_read_us"] = _r(statistics.median(m["per_call_us"]), 1)
        x["memory_read_p90_us"] = _r(percentile(m["per_call_us"], 90), 1)
        x["memory_reads"] = len(m["per_call_us"])
        if m.get("berth_cgroup_read_us"):
            x["cgroup_file_read_us"] = _r(statistics.median(m["berth_cgroup_read_us"]), 1)
    return s, x


def targets(summary: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]],
            output: dict[str, Any] | None = None) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met?) — None where a number is missing."""
    b, k, st = summary.get("berth", {}), summary.get("sdk", {}), summary.get("storm_style", {})
    out: list[tuple[str, str, bool | None]] = []

    def ratio(a: Any, c: Any) -> float | None:
        return a / c if isinstance(a, int | float) and isinstance(c, int | float) and c else None

    r = ratio(b.get("launch_p50_ms"), k.get("launch_p50_ms"))
    out.append(("berth launch p50 within 1.15x of the raw SDK",
                "n/a" if r is None else f"{r:.2f}x ({b['launch_p50_ms']} vs {k['launch_p50_ms']} ms)",
                None if r is None else r <= 1.15))
    r = ratio(st.get("launch_p50_ms"), b.get("launch_p50_ms"))
    out.append(("berth launch p50 at least 1.3x faster than Storm-style",
                "n/a" if r is None else f"{r:.2f}x ({st['launch_p50_ms']} vs {b['launch_p50_ms']} ms)",
                None if r is None else r >= 1.3))
    e = b.get("exit_detect_p50_ms")
    out.append(("berth exit detection p50 under 100 ms", "n/a" if e is None else f"{e} ms",
                None if e is None else e < 100))
    bx = extra.get("berth", {})
    if b.get("threads_100") is not None and "threads_first" in bx:
        flat = b["threads_100"] == bx["threads_first"] and b["children_100"] == bx["children_first"]
        out.append(("berth threads and children flat in the number of workers",
                    f"{bx['threads_first']} thread(s), {bx['children_first']} children at {bx['first_n']} worker(s); "
                    f"{b['threads_100']}, {b['children_100']} at {bx['watch_n']}", flat))
    else:
        out.append(("berth threads and children flat in the number of workers", "n/a", None))
    r = ratio(k.get("memory_read_us"), b.get("memory_read_us"))
    out.append(("berth memory reading at least 1000x cheaper than the stats call",
                "n/a" if r is None else f"{r:,.0f}x ({b['memory_read_us']} µs vs {k['memory_read_us']:,.0f} µs)",
                None if r is None else r >= 1000))
    return out + runc_targets(summary, extra) + output_targets(output)


def runc_targets(summary: dict[str, dict[str, Any]],
                 extra: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """Issue 13's targets for berth on runc."""
    c, rc, st = summary.get("berth_runc", {}), summary.get("runc", {}), summary.get("storm_style", {})
    cx, plain = extra.get("berth_runc", {}), summary.get("runc_noseccomp", {})
    out: list[tuple[str, str, bool | None]] = []

    def num(v: Any) -> bool:
        return isinstance(v, int | float)

    a, b = c.get("launch_p50_ms"), rc.get("launch_p50_ms")
    r = a / b if num(a) and num(b) and b else None
    out.append(("berth on runc: launch p50 within 1.2x of bare runc (same seccomp filter)",
                "n/a" if r is None else f"{r:.2f}x ({a} vs {b} ms)", None if r is None else r <= 1.2))
    a2, b2 = c.get("throughput_50_s"), rc.get("throughput_50_s")
    r = a2 / b2 if num(a2) and num(b2) and b2 else None
    out.append(("berth on runc: a burst of launches at most 1.3x bare runc's burst",
                "n/a" if r is None else f"{r:.2f}x ({a2} vs {b2} s)", None if r is None else r <= 1.3))
    s = st.get("launch_p50_ms")
    r = s / a if num(a) and num(s) and a else None
    out.append(("berth on runc: launch p50 at least 2.5x faster than Storm-style docker run",
                "n/a" if r is None else f"{r:.2f}x ({s} vs {a} ms)", None if r is None else r >= 2.5))
    e = c.get("exit_detect_p50_ms")
    out.append(("berth on runc: exit detection p50 at most 5 ms", "n/a" if e is None else f"{e} ms",
                None if e is None else e <= 5))
    m, n = cx.get("burst_exit_max_ms"), cx.get("burst_n")
    out.append((f"berth on runc: a burst of {n or 'N'} exits released at once, all reported within 100 ms",
                "n/a" if m is None else f"slowest {m} ms after its worker's last instruction",
                None if m is None else m <= 100))
    th, ch = c.get("threads_100"), c.get("children_100")
    if th is not None and "threads_first" in cx:
        ok = th == cx["threads_first"] and ch == 1 and cx.get("helper_threads_100") == 1
        out.append(("berth on runc: 1 monitor process and no thread per worker",
                    f"{cx['threads_first']} berth thread(s) at {cx['first_n']} worker(s), {th} at {cx['watch_n']}; "
                    f"{ch} helper process(es) with {cx.get('helper_threads_100')} thread(s)", ok))
    else:
        out.append(("berth on runc: 1 monitor process and no thread per worker", "n/a", None))
    rss = cx.get("monitor_rss_mb")
    out.append(("berth on runc: shim RSS at most 30 MB", "n/a" if rss is None else f"{rss} MB",
                None if rss is None else rss <= 30))
    a, b = rc.get("launch_p50_ms"), plain.get("launch_p50_ms")
    d = float(a) - float(b) if num(a) and num(b) else None  # type: ignore[arg-type]
    out.append(("seccomp costs a runc launch at most 5 ms (p50 with the filter minus without)",
                "n/a" if d is None else f"{d:+.2f} ms ({a} vs {b} ms)", None if d is None else d <= 5))
    return out


def output_targets(output: dict[str, Any] | None) -> list[tuple[str, str, bool | None]]:
    """Issue 18's: what draining a worker's output costs the shim, and what it keeps on disk."""
    if not output:
        return [("berth on runc: the shim's CPU while a worker writes 100 MB/s of output (stated)", "n/a", None)]
    pc, fl = output["paced"], output["flood"]
    return [(f"berth on runc: the shim's CPU while a worker writes {output['rate_mb_s']:g} MB/s of output (stated)",
             f"{pc['shim_cpu_pct']} % of a core at {pc['mb_s']} MB/s", True),
            ("berth on runc: a worker's output on disk never above its limit + 1 MiB, even flooding",
             f"{max(pc['peak_on_disk_mb'], fl['peak_on_disk_mb'])} MiB at most (limit {output['limit_mb']} MiB; "
             f"flood drained at {fl['mb_s']} MB/s)",
             max(pc["peak_on_disk_mb"], fl["peak_on_disk_mb"]) <= output["limit_mb"] + 1)]


def output_section(output: dict[str, Any] | None) -> list[str]:
    if not output:
        return []
    pc, fl = output["paced"], output["flood"]
    return ["## Output through berth-shim (runc)", "",
            md_table(["worker", "MB/s", "shim CPU s", "shim CPU", "peak on disk MiB"],
                     [[f"paced at {output['rate_mb_s']:g} MB/s for {pc['elapsed_s']} s", _fmt(pc["mb_s"]),
                       _fmt(pc["shim_cpu_s"]), f"{pc['shim_cpu_pct']} % of a core", _fmt(pc["peak_on_disk_mb"])],
                      [f"flood ({fl['elapsed_s']} s)", _fmt(fl["mb_s"]), _fmt(fl["shim_cpu_s"]),
                       f"{fl['shim_cpu_s_per_gb']} s per GiB", _fmt(fl["peak_on_disk_mb"])]]),
            "", f"(`python -m bench.output`: one worker, the node's log limit {output['limit_mb']} MiB; the shim "
            "splices the worker's pipe into its files and rotates by renaming.)", ""]


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:g}"
    return str(v)


HEAD = ["launcher", "launch p50 ms", "launch p90 ms", "{c} at once s", "exit detect p50 ms", "threads @{w}",
        "children @{w}", "RSS @{w} MB", "CPU s, {i:g} s idle @{w}", "memory read µs"]


def headers(params: dict[str, Any]) -> list[str]:
    return [h.format(c=params["concurrent"], w=params["watch"], i=params["idle"]) for h in HEAD]


def rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [[TITLES[n], *(_fmt(summary[n][f]) for f in FIELDS)] for n in LAUNCHERS if n in summary]


def console_table(summary: dict[str, dict[str, Any]], params: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(headers(params)):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows(summary):
        t.add_row(*r)
    return t


def md_table(head: list[str], body: list[list[str]], numeric: bool = True) -> str:
    right = ["---"] + ["---:" if numeric else "---"] * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(right) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


EXTRA_ROWS = [
    ("launch_min_ms", "fastest sequential launch, ms"),
    ("launch_call_p50_ms", "launch call returns after, p50 ms"),
    ("exit_detect_p90_ms", "exit detection p90, ms"),
    ("burst_calls_s", "burst: last launch call returned, s"),
    ("burst_first_running_s", "burst: first worker running, s"),
    ("burst_exit_p50_ms", "burst: exit detection p50 (N released at once), ms"),
    ("burst_exit_max_ms", "burst: exit detection max, ms"),
    ("helper_threads_100", "threads inside the helper processes"),
    ("monitor_rss_mb", "berth-shim RSS, MB"),
    ("launcher_rss_mb", "launcher process RSS alone, MB"),
    ("baseline_rss_mb", "launcher process RSS before the launcher existed, MB"),
    ("pss_100_mb", "launcher + helpers PSS, MB"),
    ("engine_idle_cpu_s", "dockerd + containerd CPU s over the idle window"),
    ("memory_read_p90_us", "memory read p90, µs"),
    ("cgroup_file_read_us", "berth's cgroup file read alone (no lookup), µs"),
]


def markdown(result: dict[str, Any], plots: list[str]) -> str:
    p, m = result["params"], result["machine"]
    summary, extra = result["summary"], result["extra"]
    out = ["# Benchmarks", "",
           "berth (on the Docker engine, and on runc under berth-shim) against a Storm-style launcher, the raw "
           "Docker SDK and bare runc: the same image "
           f"(`{p['image']}`), the same plan and so the same limits (1 cpu, 256 MiB, 256 pids, read-only root, "
           "no capabilities, the worker user `berth-alice`). Generated by "
           f"`{result['command']}`; how each number is taken is described under *Method* below.", "",
           "## Machine", "",
           f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gib']} GiB; kernel {m['kernel']} "
           f"(cgroup {m['cgroup']})",
           f"- Docker engine {m['docker_server']} (client {m['docker_client']}), {m['containerd']}; "
           f"runc: {m['runc']}; Python {m['python']}; berth at {m.get('berth', 'unknown')}",
           f"- engine: {result['engine']}; date: {m['date']}; run took {result['duration_s']:.0f} s",
           f"- sizes: {p['n']} sequential launches per launcher (+{p['warmup']} warm-up, dropped), "
           f"{p['concurrent']} at once, {p['watch']} watched for {p['idle']:g} s idle"
           + (" — **quick mode: shortened idle window and sizes**" if p.get("quick") else ""),
           f"- clock check: CLOCK_REALTIME moved {result['clock_drift_us']:.0f} µs against CLOCK_MONOTONIC "
           "over the run", "",
           "## Results", "",
           md_table(headers(p), rows(summary)), "",
           "Columns, left to right, are the JSON fields `" + "`, `".join(FIELDS) + "` of `python -m bench all --json` "
           f"(measured with {p['concurrent']} workers at once and {p['watch']} watched, whatever the names say).",
           "", "## Targets", "",
           md_table(["target", "measured", "met"],
                    [[t, v, "n/a" if ok is None else ("yes" if ok else "**no**")] for t, v, ok in result["targets"]],
                    numeric=False),
           "", *output_section(result.get("output")), "## More numbers", ""]
    names = [n for n in LAUNCHERS if n in extra]
    body = []
    for key, label in EXTRA_ROWS:
        if any(extra[n].get(key) is not None for n in names):
            body.append([label, *(_fmt(extra[n].get(key)) for n in names)])
    out += [md_table(["", *(TITLES[n] for n in names)], body), ""]
    if plots:
        out += ["## Plots", ""]
        out += [f"![{name}]({name})" for name in plots]
        out.append("")
    notes = REPO / "bench" / "NOTES.md"
    if notes.exists():
        out += [notes.read_text().rstrip(), ""]
    cluster = REPO / "bench" / "CLUSTER.md"  # python -m bench.cluster's tables, kept when this is made again
    if cluster.exists():
        out += [cluster.read_text().rstrip(), ""]
    return "\n".join(out)


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
    """PNG plots beside the Markdown; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = result["raw"]
    names = [n for n in LAUNCHERS if n in raw]
    written: list[str] = []

    seq_names = [n for n in names if raw[n].get("sequential")]
    if seq_names:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key, title in ((axes[0], "launch_ms", "launch latency (call → worker's first instruction)"),
                               (axes[1], "exit_ms", "exit detection (worker's last instruction → callback)")):
            data = [[s[key] for s in raw[n]["sequential"]] for n in seq_names]
            bp = ax.boxplot(data, showfliers=False, patch_artist=True, widths=0.5)
            for patch, n in zip(bp["boxes"], seq_names, strict=True):
                patch.set_facecolor(COLORS[n])
                patch.set_alpha(0.35)
            for i, (vals, n) in enumerate(zip(data, seq_names, strict=True), start=1):
                xs = [i + ((j % 7) - 3) * 0.03 for j in range(len(vals))]
                ax.scatter(xs, vals, s=9, color=COLORS[n], zorder=3)
            ax.set_xticks(range(1, len(seq_names) + 1), [TITLES[n].replace(" ", "\n", 1) for n in seq_names],
                          fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms (log)")
            ax.set_title(title, fontsize=10)
            ax.grid(axis="y", alpha=0.3, which="both")
        fig.suptitle(f"sequential launches, n={result['params']['n']} per launcher", fontsize=11)
        fig.tight_layout()
        fig.savefig(out_dir / "bench-launch.png", dpi=110)
        plt.close(fig)
        written.append("bench-launch.png")

    burst_names = [n for n in names if raw[n].get("burst")]
    if burst_names:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for n in burst_names:
            ts = raw[n]["burst"]["running_at_s"]
            ax.step([0, *ts], range(len(ts) + 1), where="post", color=COLORS[n], label=TITLES[n])
        ax.set_xlabel("seconds after the launch calls were let go")
        ax.set_ylabel("workers running (t0 stamped)")
        ax.set_title(f"{result['params']['concurrent']} workers launched at once", fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "bench-throughput.png", dpi=110)
        plt.close(fig)
        written.append("bench-throughput.png")

    watch_names = [n for n in names if raw[n].get("watch")]
    if watch_names:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.0))
        panels = (("threads", "launcher threads beyond baseline"), ("children", "helper processes"),
                  ("rss_mb", "RSS, launcher + helpers, MB (log)"))
        for ax, (key, title) in zip(axes, panels, strict=True):
            for i, n in enumerate(watch_names):
                ramp = raw[n]["watch"]["ramp"]
                ax.plot([pt["workers"] for pt in ramp], [pt[key] for pt in ramp], marker="os^D"[i % 4], ms=4,
                        lw=1.5, ls=("-", "--", "-.", ":")[i % 4], color=COLORS[n], label=TITLES[n])
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("running workers")
            ax.grid(alpha=0.3)
        axes[2].set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"watching cost ({result['params']['watch']} workers, idle {result['params']['idle']:g} s)",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(out_dir / "bench-watch.png", dpi=110)
        plt.close(fig)
        written.append("bench-watch.png")

    mem_names = [n for n in names if raw[n].get("memory")]
    if mem_names:
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        vals = [statistics.median(raw[n]["memory"]["per_call_us"]) for n in mem_names]
        labels = [TITLES[n] + (" (stats call)" if n == "sdk" else "") for n in mem_names]
        ax.barh(labels, vals, color=[COLORS[n] for n in mem_names])
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:,.1f} µs", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("µs per memory reading (log)")
        ax.set_title("reading a running worker's memory usage", fontsize=11)
        ax.invert_yaxis()
        ax.set_xlim(right=max(vals) * 30)
        fig.tight_layout()
        fig.savefig(out_dir / "bench-memory.png", dpi=110)
        plt.close(fig)
        written.append("bench-memory.png")
    return written
