"""python -m bench.storm — a real Storm cluster, per isolation variant: start, recovery, memory.

    python -m bench.storm [--variants default,...] [--rounds 3] [--quick] [--json] [--out DIR]

Needs root and the project's ZooKeeper (``scripts/zookeeper``; started if absent, left running).
Each variant gets a Storm cluster of its own (``scripts/storm``, one supervisor, fresh ports),
purged at the end. Per round, on a fresh word count of two workers:

* **submit -> first ack**: from just before ``scripts/storm submit`` runs (its client JVM
  included) to the spout's first acked tuple, as the spout stamps it (``BERTH-FIRST-ACK <epoch
  ms>`` in its worker.log: no wait for Storm's statistics, which reach Nimbus seconds later).
* **kill -> acking again**: SIGKILL of the worker JVM that runs the spout (as a crash would), to
  the first ack of the spout Storm's supervisor relaunched on that slot (``BERTH-FIRST-ACK`` again,
  in the same worker.log, or ``BERTH-ACK-RESUMED`` if the spout lived).
* **memory**: once it acks steadily, the RSS of the supervisor JVM, of each worker (its worker JVM
  and the LogWriter JVM Storm puts in front of it), and of what a variant adds (berth's
  processes), read from /proc on the host: the same measure whatever isolates the worker.

A variant is a name, a title, and a context manager that yields the ``Hooks`` it starts Storm
with (``scripts/storm start``'s --supervisor-yaml and --extlib-daemon, the submitting user, the
processes whose memory is its overhead, what to start once Storm runs): ``default`` (Storm's own
``DefaultResourceIsolationManager``), ``berth_docker`` and ``berth_runc`` (berth's plugin and
``berth serve --storm`` beside the supervisor: ``bench._stormberth``). Results: a table, JSON in
bench/out/storm-<time>.json (``--json``: on stdout only), and with ``--out DIR`` bench-storm.md
(the table) and bench-storm.png there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth._linux.proc import rss_bytes

from ._common import REPO, BenchError, percentile
from ._storm import WORDCOUNT, StormCluster, StormError, worker_pids

WAIT_S = 300.0
MIB = 1024 * 1024


@dataclass
class Hooks:
    """How a variant's cluster is started and used (all optional: Storm's defaults)."""

    supervisor_yaml: Path | None = None
    extlib_daemon: Path | None = None
    user: str | None = None
    """Who submits; None: the daemons' own user (Storm's default isolation needs that)."""
    overhead: Callable[[], dict[str, int]] = dict
    """Label -> pid of the processes the variant adds (their RSS is its overhead)."""
    started: Callable[[], None] = lambda: None
    """Run once the cluster runs (berth reads the storm.yaml its supervisor was started with)."""


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    hooks: Callable[[Path, StormCluster], contextlib.AbstractContextManager[Hooks]]
    """Given a work dir of its own and the cluster (not started yet), sets the variant up and yields
    its hooks; tears down on exit (the cluster is purged by the bench)."""


@contextlib.contextmanager
def _no_hooks(work: Path, cluster: StormCluster) -> Iterator[Hooks]:
    yield Hooks()


def _berth(runtime: str) -> Callable[[Path, StormCluster], contextlib.AbstractContextManager[Hooks]]:
    """Storm's supervisor with berth's plugin, ``berth serve --storm`` beside it on ``runtime``;
    its overhead: berth's processes (``BerthStorm.processes``)."""
    @contextlib.contextmanager
    def hooks(work: Path, cluster: StormCluster) -> Iterator[Hooks]:
        from ._stormberth import BerthStorm

        bs = BerthStorm(runtime=runtime, base=work, cluster=cluster)
        sup, ext = bs.prepare()
        try:
            yield Hooks(supervisor_yaml=sup, extlib_daemon=ext, user="berth-alice", overhead=bs.processes,
                        started=bs.start_berth)
        finally:
            bs.stop_berth()
            bs.remove_containers()

    return hooks


VARIANTS: dict[str, Variant] = {
    "default": Variant("default", "Storm's default (no isolation)", _no_hooks),
    "berth_docker": Variant("berth_docker", "berth on docker", _berth("docker")),
    "berth_runc": Variant("berth_runc", "berth on runc", _berth("runc")),
}


@dataclass
class Round:
    submit_to_ack_s: float
    kill_to_ack_s: float
    supervisor_mb: float
    workers_mb: list[float]
    overhead_mb: dict[str, float] = field(default_factory=dict)


def _stamps(logs: Path, topology_id: str, tag: str) -> list[int]:
    """Epoch ms of every ``tag <ms>`` line in the topology's worker logs (any slot, rolled-over too)."""
    found = []
    for f in sorted(logs.glob(f"workers-artifacts/{topology_id}/*/worker.log*")):
        if f.is_symlink() or not f.is_file():
            continue  # a worker's dir: only its plain files are read (a fifo would block the bench)
        with contextlib.suppress(OSError):
            found += [int(m.group(1)) for m in re.finditer(rf"{tag} (\d+)", f.read_text(errors="replace"))]
    return found


def _wait(pred: Callable[[], Any], what: str, timeout: float = WAIT_S, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def _slot_pids(topology_id: str, port: int) -> dict[int, list[bytes]]:
    """The JVMs of a topology's slot (the worker and its LogWriter), with their command lines."""
    found = {}
    for pid in worker_pids(topology_id):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if f"-Dworker.port={port}".encode() in args:
                found[pid] = args
    return found


def _worker_jvm(topology_id: str, port: int) -> int | None:
    """The worker JVM of a slot, not its LogWriter."""
    return next((pid for pid, args in _slot_pids(topology_id, port).items()
                 if b"org.apache.storm.daemon.worker.Worker" in args), None)


def _on_two_workers(c: StormCluster, name: str) -> dict[str, Any] | None:
    info = c.info(name)
    return info if info is not None and len(info["workers"]) == 2 else None


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += rss_bytes(pid)
    return round(total / MIB, 1)


def one_round(c: StormCluster, hooks: Hooks, logs: Path, supervisor_pid: int, n: int, settle_s: float) -> Round:
    name = f"bench-{n}-{os.urandom(3).hex()}"
    t_submit = time.time()
    c.submit(WORDCOUNT, name, "2", user=hooks.user)
    info = _wait(lambda: _on_two_workers(c, name), f"{name} on two workers")
    topo = info["id"]
    spout_port = next(w["port"] for w in info["workers"] if "sentences" in w["components"])
    first = _wait(lambda: _stamps(logs, topo, "BERTH-FIRST-ACK"), f"{name}'s first ack")[0]
    time.sleep(settle_s)  # steady acking before memory is read
    rnd = Round(submit_to_ack_s=round(first / 1000 - t_submit, 3), kill_to_ack_s=0.0,
                supervisor_mb=_rss_mb([supervisor_pid]),
                workers_mb=[_rss_mb(list(_slot_pids(topo, w["port"]))) for w in info["workers"]],
                overhead_mb={k: _rss_mb([p]) for k, p in hooks.overhead().items()})
    victim = _wait(lambda: _worker_jvm(topo, spout_port), "the spout's worker JVM")
    t_kill = time.time()
    os.kill(victim, signal.SIGKILL)
    back = _wait(lambda: [t for tag in ("BERTH-FIRST-ACK", "BERTH-ACK-RESUMED") for t in _stamps(logs, topo, tag)
                          if t / 1000 > t_kill], f"{name} acking again after the kill")
    rnd.kill_to_ack_s = round(min(back) / 1000 - t_kill, 3)
    c.kill(name)
    _wait(lambda: c.info(name) is None and not worker_pids(topo), f"{name} gone")
    return rnd


def run_variant(v: Variant, rounds: int, settle_s: float) -> dict[str, Any]:
    work = Path("/var/lib/berth-bench/storm") / f"{v.name}-{os.urandom(3).hex()}"
    work.mkdir(parents=True, mode=0o755)
    cluster = StormCluster(instance="b" + os.urandom(5).hex())
    results: list[Round] = []
    with v.hooks(work, cluster) as hooks:
        try:
            t0 = time.monotonic()
            cluster.start(supervisor_yaml=hooks.supervisor_yaml, extlib_daemon=hooks.extlib_daemon)
            hooks.started()
            start_s = round(time.monotonic() - t0, 1)
            env = cluster.environment()
            logs = Path(env["STORM_SUPERVISOR_LOG_DIRS"].split()[0])
            supervisor_pid = cluster.pid("supervisor-1")
            if supervisor_pid is None:
                raise BenchError("the supervisor does not run")
            for n in range(rounds):
                results.append(one_round(cluster, hooks, logs, supervisor_pid, n, settle_s))
                print(f"  {v.name} round {n + 1}/{rounds}: {results[-1]}", file=sys.stderr)
        finally:
            cluster.run("purge", check=False)
    return {**summarize(v, start_s, results), "instance": cluster.instance}


def summarize(v: Variant, start_s: float, results: list[Round]) -> dict[str, Any]:
    def stat(xs: list[float]) -> dict[str, float | None]:
        return {"p50": percentile(xs, 50), "min": min(xs, default=None), "max": max(xs, default=None)}

    added = results[0].overhead_mb if results else {}
    return {
        "title": v.title, "rounds": len(results), "cluster_start_s": start_s,
        "submit_to_ack_s": stat([r.submit_to_ack_s for r in results]),
        "kill_to_ack_s": stat([r.kill_to_ack_s for r in results]),
        "supervisor_mb": stat([r.supervisor_mb for r in results]),
        "worker_mb": stat([w for r in results for w in r.workers_mb]),
        "overhead_mb": {k: stat([r.overhead_mb[k] for r in results]) for k in added},
        "raw": [r.__dict__ for r in results],
    }


def table(res: dict[str, dict[str, Any]]) -> str:
    """The Markdown table docs/benchmarks.md shows (p50, and min-max over the rounds)."""
    base = res.get("default", {}).get("kill_to_ack_s", {}).get("p50")
    rows = ["| variant | submit -> first ack (s) | worker killed -> acking again (s) | vs default | "
            "supervisor RSS (MiB) | per worker RSS (MiB) | added processes RSS (MiB) |",
            "|---|---|---|---|---|---|---|"]

    def cell(s: dict[str, float | None], nd: int = 1) -> str:
        if s.get("p50") is None:
            return "-"
        return f"{s['p50']:.{nd}f} ({s['min']:.{nd}f}-{s['max']:.{nd}f})"

    for r in res.values():
        k = r["kill_to_ack_s"]["p50"]
        ratio = f"{(k / base - 1) * 100:+.0f} %" if base and k is not None else "-"
        extra = ", ".join(f"{name} {cell(s, 0)}" for name, s in r["overhead_mb"].items()) or "none"
        rows.append(f"| {r['title']} | {cell(r['submit_to_ack_s'])} | {cell(r['kill_to_ack_s'])} | {ratio} | "
                    f"{cell(r['supervisor_mb'], 0)} | {cell(r['worker_mb'], 0)} | {extra} |")
    return "\n".join(rows) + "\n"


def plot(res: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in ((axes[0], "submit_to_ack_s", "submit -> first ack (s)"),
                           (axes[1], "kill_to_ack_s", "worker killed -> acking again (s)")):
        p50 = [res[n][key]["p50"] or 0 for n in names]
        lo = [p - (res[n][key]["min"] or 0) for p, n in zip(p50, names, strict=True)]
        hi = [(res[n][key]["max"] or 0) - p for p, n in zip(p50, names, strict=True)]
        ax.bar(names, p50, yerr=[lo, hi], capsize=4, color="#1f77b4")
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _zookeeper() -> None:
    script = str(REPO / "scripts/zookeeper")
    if subprocess.run([script, "status"], capture_output=True).returncode != 0:
        subprocess.run([script, "start"], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, help="rounds per variant (3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="one round, a short settle: a smoke run")
    ap.add_argument("--json", action="store_true", help="only the results' JSON on stdout")
    ap.add_argument("--out", type=Path, help="write bench-storm.md (the table) and bench-storm.png into this dir")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.storm: needs root (scripts/storm)", file=sys.stderr)
        return 2
    names = [n for n in a.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    rounds = a.rounds or (1 if a.quick else 3)
    if unknown or not names or not 1 <= rounds <= 20:
        print(f"bench.storm: variants of {', '.join(VARIANTS)}; rounds 1-20", file=sys.stderr)
        return 2
    _zookeeper()
    res: dict[str, dict[str, Any]] = {}
    try:
        for n in names:
            res[n] = run_variant(VARIANTS[n], rounds, 2.0 if a.quick else 15.0)
    except (BenchError, StormError) as e:
        print(f"bench.storm: {e}", file=sys.stderr)
        return 1
    out = REPO / "bench" / "out" / f"storm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "bench-storm.md").write_text(table(res))
        plot(res, a.out / "bench-storm.png")
    if a.json:
        print(json.dumps(res))
    else:
        print(table(res) + f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
