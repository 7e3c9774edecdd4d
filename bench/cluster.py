"""python -m bench.cluster — cluster mode on a local ensemble: schedule to running, a rolling
replacement, a coordinator's failover, watch latency, agent cost.

    python -m bench.cluster [--workers 30] [--nodes 3] [--rolling 15] [--samples 300]
                            [--session 10] [--dead-after 30] [--json] [--no-docs]

Needs root, the project's engine and ZooKeeper (``scripts/engine``, ``scripts/zookeeper``; both
started if not running, and then left running). ``--nodes`` ``berth agent`` processes and two
``berth schedule --follow`` processes (one active, one standby) run for the whole measurement.

* **schedule -> all running**: two topologies (``--rolling`` workers and the rest of ``--workers``)
  stored; the time until the engine lists every worker running (polled every 10 ms), and until the
  active coordinator's pass was seen and every node reported its document applied and running.
* **rolling replacement**: the ``--rolling``-worker topology's env changed (default
  ``max_unavailable``, 25%): the time until the active coordinator's passes are over and every
  node runs the new spec, and the most workers of the topology down at once, from the engine's
  own events (a worker is down from the kill or death of its container to the start of the next).
* **failover**: the active coordinator and one agent SIGKILLed at the same moment: the time until
  the standby is active (its output says so), until the dead node's document is emptied, and until
  the engine lists every worker running on the other nodes. Expected: about session timeout +
  ``--dead-after`` + a launch.
* **watch latency**: an agent in this process (its own ZooKeeper session; the writer has another)
  and a document rewritten ``--samples`` times with a new generation and the same workers, so
  nothing launches: from just before ``set`` returns to the moment the agent starts applying the
  version it read (``Agent.apply_listeners``, ``time.time()`` on both sides).
* **agent cost**: RSS and threads of each agent process, read from /proc once it runs its workers.

The tables go to ``bench/CLUSTER.md`` (``python -m bench all`` puts them in docs/benchmarks.md
too) and, unless ``--no-docs``, into docs/benchmarks.md's cluster section.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import usage

REPO = Path(__file__).resolve().parents[1]
SOCKET = "unix:///run/berth-dev/docker.sock"
FOREVER = "import signal\nsignal.pause()\n"
SECTION = "## Cluster (`python -m bench.cluster`)"


def _zk_hosts() -> str:
    script = str(REPO / "scripts/zookeeper")
    if subprocess.run([script, "status"], capture_output=True).returncode != 0:
        subprocess.run([script, "start"], check=True, capture_output=True)
    out = subprocess.run([script, "env"], check=True, capture_output=True, text=True).stdout
    return out.strip().removeprefix("export BERTH_ZK=")


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _until(pred: Callable[[], bool], what: str, timeout_s: float = 300.0, every_s: float = 0.01) -> float:
    """Poll what other processes own (the engine, the coordinators' output); the time it held."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.cluster: timed out waiting for {what}")
        time.sleep(every_s)
    return time.monotonic()


def most_down(engine: Any, topology: str, since: float, until: float) -> tuple[int, int]:
    """(the most workers of ``topology`` down at one moment, how many workers started a new
    container), from the engine's event history."""
    events = engine.events(since=int(since), until=int(until) + 1, decode=True,
                           filters={"type": "container", "label": f"berth.topology={topology}"})
    down: set[str] = set()
    started: set[str] = set()
    worst = 0
    for e in sorted(events, key=lambda e: e["timeNano"]):
        if e["timeNano"] < since * 1e9:
            continue
        wid = e["Actor"]["Attributes"]["berth.worker"]
        if e["Action"] in ("kill", "die", "stop"):
            down.add(wid)
        elif e["Action"] == "start":
            down.discard(wid)
            started.add(wid)
        worst = max(worst, len(down))
    return worst, len(started)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import docker

        from berth._cluster.admin import init_cluster
        from berth._cluster.layout import ZkLayout, new_credential, write_credential
        from berth._cluster.zk import Connection
        from berth._core.clusterconfig import ClusterSection

        self.args = args
        self.hosts = _zk_hosts()
        self.run_id = uuid.uuid4().hex[:6]
        self.base = Path("/var/lib/berth-bench/cluster") / self.run_id
        self.base.mkdir(parents=True)
        self.settings = ClusterSection(zk=self.hosts, root=f"/bench-{self.run_id}", session_timeout_s=args.session,
                                       state_interval_s=0.2)
        self.layout = ZkLayout(self.settings.root)
        self.co_cred = new_credential("berth-coordinator")
        write_credential(str(self.base / "coordinator.auth"), self.co_cred)
        (self.base / "coordinator.toml").write_text(
            f'[cluster]\nzk = "{self.hosts}"\nroot = "{self.settings.root}"\nsession_timeout_s = {args.session}\n'
            'reconnect_max_delay_s = 0.5\n')
        self.admin = Connection(self.hosts, self.co_cred, 10, patient=True)
        self.admin.start_and_wait(30)
        init_cluster(self.admin, self.layout, self.co_cred)
        self.engine = docker.APIClient(base_url=SOCKET, version="auto")
        self.names = [f"bench-{self.run_id}-{i}" for i in range(args.nodes + 1)]  # the last: the in-process agent
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.coordinators: list[subprocess.Popen[bytes]] = []
        self.topo_rolling, self.topo_rest = f"bench{self.run_id}-roll", f"bench{self.run_id}-rest"

    def _proc(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        fh = open(log, "wb")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen([sys.executable, "-m", "berth", *argv], stdout=fh, stderr=fh, start_new_session=True)
        fh.close()
        return proc

    def setup(self) -> None:
        self.enrol()
        for name in self.names[:-1]:
            d = self.base / name
            self.agents[name] = self._proc(["--config", str(d / "berth.toml"), "agent", "--auth", str(d / "node.auth"),
                                            "--no-api"], d / "agent.log")
        _until(lambda: all(self.admin.client.exists(self.layout.live(n)) for n in self.agents), "the agents", 60)
        for i in range(2):
            self.coordinators.append(self._proc(
                ["--config", str(self.base / "coordinator.toml"), "schedule", "--follow", "--auth",
                 str(self.base / "coordinator.auth"), "--dead-after", str(self.args.dead_after)],
                self.base / f"co{i}.log"))
            _until(lambda i=i: self._said(i, "active coordinator" if i == 0 else "waiting for the active"),  # type: ignore[misc]
                   f"coordinator {i}", 60)

    def enrol(self) -> None:
        from berth._cluster.admin import add_node
        from berth._cluster.layout import new_credential, node_user, write_credential

        w = self.args.workers
        for name in self.names:
            d = self.base / name
            d.mkdir()
            cred = new_credential(node_user(name))
            write_credential(str(d / "node.auth"), cred)
            add_node(self.admin, self.layout, self.co_cred, name, cred.digest_id)
            (d / "berth.toml").write_text(
                f'[node]\nname = "{name}"\nlocal_dir = "{d}/local"\nlog_dir = "{d}/log"\nstate_dir = "{d}/state"\n'
                f'docker_host = "{SOCKET}"\n[images]\ndefault = "berth/python:latest"\n'
                f'[container]\ncgroup_parent = "/berth-bench"\n[supervisor]\ngrace_s = 1.0\n'
                f'[cluster]\nzk = "{self.hosts}"\nroot = "{self.settings.root}"\nstate_interval_s = 0.2\n'
                f'session_timeout_s = {self.args.session}\nreconnect_max_delay_s = 0.5\n'
                f'ports = {list(range(6700, 6700 + w))}\nmemory_mb = {64 * w}\ncpu_percent = {100 * w}\n')

    def _said(self, i: int, text: str) -> bool:
        return any(line.startswith(text) for line in (self.base / f"co{i}.log").read_text().splitlines())

    def _running(self, names: list[str]) -> int:
        return sum(1 for n in names for c in self.engine.containers(filters={"label": f"berth.node={n}"})
                   if c["State"] == "running")

    def _topologies(self, env: dict[str, str]) -> Any:
        from berth._cluster.placement import parse_topologies

        def topo(n: int, **kw: Any) -> dict[str, Any]:
            return {"user": "berth-alice", "command": ["python3", "-c", FOREVER], "workers": n, "cpu_percent": 10,
                    "memory_mb": 48, **kw}
        return parse_topologies({"topologies": {self.topo_rolling: topo(self.args.rolling, env=env),
                                                self.topo_rest: topo(self.args.workers - self.args.rolling)}})

    def schedule(self) -> dict[str, Any]:
        from berth._cluster.scheduler import Coordinator

        self.co = Coordinator(self.hosts, self.co_cred, self.settings, self.args.dead_after)
        self.co.connect()
        nodes = list(self.agents)
        t0 = time.monotonic()
        version = self.co.store_topologies(self._topologies({}))
        t_running = _until(lambda: self._running(nodes) >= self.args.workers, "every worker running")
        versions, _ = self.co.wait_for_pass(version, 120)
        conv = self.co.converge(versions, 120)
        return {"all_running_s": round(t_running - t0, 3), "all_reported_s": round(time.monotonic() - t0, 3),
                "converged": conv.done, "per_node": {n: r["workers"] for n, r in conv.nodes.items() if r["live"]}}

    def rolling(self) -> dict[str, Any]:
        since, t0 = time.time(), time.monotonic()
        version = self.co.store_topologies(self._topologies({"GENERATION": "2"}))
        versions, _ = self.co.wait_for_pass(version, 600)
        conv = self.co.converge(versions, 300)
        elapsed = time.monotonic() - t0
        worst, replaced = most_down(self.engine, self.topo_rolling, since, time.time())
        topo = self._topologies({})[self.topo_rolling]
        return {"workers": self.args.rolling, "max_unavailable": topo.unavailable(), "seconds": round(elapsed, 3),
                "most_down": worst, "replaced": replaced, "converged": conv.done}

    def failover(self) -> dict[str, Any]:
        from berth._cluster.admin import read_cluster

        victim = list(self.agents)[-1]
        others = [n for n in self.agents if n != victim]
        t0 = time.monotonic()
        self.coordinators[0].send_signal(signal.SIGKILL)
        self.agents[victim].send_signal(signal.SIGKILL)
        t_active = _until(lambda: self._said(1, "active coordinator"), "the standby to take over", 300)
        t_moved = _until(lambda: not read_cluster(self.admin, self.layout)[victim].workers, "the dead node's "
                         "document to be emptied", 300, every_s=0.05)
        t_running = _until(lambda: self._running(others) >= self.args.workers, "every worker running elsewhere", 300)
        for p in self.coordinators:  # the watch latency is measured on documents no coordinator rewrites
            p.terminate()
            p.wait(30)
        return {"session_timeout_s": self.args.session, "dead_after_s": self.args.dead_after,
                "standby_active_s": round(t_active - t0, 3), "moved_s": round(t_moved - t0, 3),
                "running_elsewhere_s": round(t_running - t0, 3)}

    def watch_latency(self) -> dict[str, Any]:
        from berth import Node
        from berth._cluster.agent import Agent
        from berth._cluster.documents import encode_assignment
        from berth._cluster.layout import read_credential
        from berth._service.supervisor import Supervisor
        from berth._storm.loading import load_config

        me = self.names[-1]
        cfg = load_config(self.base / me / "berth.toml")
        self.local = Agent(Supervisor(Node(cfg)), self.hosts, read_credential(str(self.base / me / "node.auth")),
                           self.settings)
        seen: dict[str, float] = {}
        cond = threading.Condition()

        def on_apply(version: str, at: float) -> None:
            with cond:
                seen[version] = at
                cond.notify_all()

        self.local.apply_listeners.append(on_apply)
        self.local.start()
        path = self.layout.assignment(me)
        latencies = []
        for i in range(self.args.samples + 10):
            raw = encode_assignment(me, [], generation=str(i))
            t = time.time()
            stat = self.admin.client.set(path, raw)
            version = f"{stat.mzxid:#x}"
            with cond:
                assert cond.wait_for(lambda v=version: v in seen, 30), "the agent did not apply"  # type: ignore[misc]
            if i >= 10:  # warm-up
                latencies.append((seen[version] - t) * 1000)
        return {"p50": round(statistics.median(latencies), 2), "p99": round(_pct(latencies, 99), 2),
                "max": round(max(latencies), 2), "n": len(latencies)}

    def close(self) -> None:
        from berth._cluster.admin import remove_cluster

        if getattr(self, "local", None) is not None:
            self.local.stop()
        for p in [*self.agents.values(), *self.coordinators]:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        if getattr(self, "co", None) is not None:
            self.co.close()
        for n in self.names:
            for c in self.engine.containers(all=True, filters={"label": f"berth.node={n}"}):
                self.engine.remove_container(c["Id"], force=True)
        remove_cluster(self.admin, self.layout)
        self.admin.close()
        subprocess.run(["rm", "-rf", str(self.base)], check=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    b = Bench(args)
    result: dict[str, Any] = {"workers": args.workers, "nodes": args.nodes, "samples": args.samples, "zk": b.hosts,
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        if args.only != "watch":
            b.setup()
            result["schedule"] = b.schedule()
            result["agent_processes"] = [usage(p.pid) for p in b.agents.values()]
            result["rolling"] = b.rolling()
            result["failover"] = b.failover()
        else:
            b.enrol()
        result["watch_ms"] = b.watch_latency()
        result["load_average"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        b.close()
    return result


def markdown(res: dict[str, Any]) -> str:
    s, r, f, w = res["schedule"], res["rolling"], res["failover"], res["watch_ms"]
    cost = res["agent_processes"]
    rss = [p["VmRSS"] / 1024 for p in cost]
    return "\n".join([
        SECTION, "",
        f"{res['nodes']} `berth agent` processes, two `berth schedule --follow` (one active, one standby), the "
        f"3-server ensemble and the engine on this machine (2 cores, shared with other work: load average "
        f"{res['load_average'][0]:g} at the end); {res['date']}.", "",
        "| measured | value | target |", "| --- | ---: | --- |",
        f"| `schedule` -> all {res['workers']} workers running on {res['nodes']} nodes | {s['all_running_s']} s "
        f"(all reported in ZooKeeper {s['all_reported_s']} s) | |",
        f"| rolling replacement of a {r['workers']}-worker topology, max_unavailable {r['max_unavailable']} (25%) | "
        f"{r['seconds']} s; {r['replaced']} replaced, at most {r['most_down']} down at once | at most "
        f"{r['max_unavailable']} down |",
        f"| failover: active coordinator and one agent SIGKILLed -> standby active | {f['standby_active_s']} s | "
        f"about the session timeout ({f['session_timeout_s']:g} s) |",
        f"| failover -> the dead node's document emptied | {f['moved_s']} s | session timeout + dead_after "
        f"({f['dead_after_s']:g} s) |",
        f"| failover -> its workers running elsewhere | {f['running_elsewhere_s']} s | |",
        f"| watch latency, document written -> agent applying it ({w['n']} samples) | p50 {w['p50']} ms, p99 "
        f"{w['p99']} ms, max {w['max']} ms | p99 under 50 ms |",
        f"| agent process running {res['workers'] // res['nodes']} workers (`--no-api`) | RSS "
        f"{min(rss):.0f}-{max(rss):.0f} MiB, {max(p['Threads'] for p in cost)} threads | |", ""])


def write_docs(md: str) -> None:
    (REPO / "bench" / "CLUSTER.md").write_text(md)
    doc = REPO / "docs" / "benchmarks.md"
    text = doc.read_text()
    if SECTION in text:
        head, _, tail = text.partition(SECTION)
        rest = tail.split("\n## ", 1)
        text = head + md + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + md
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rolling", type=int, default=15, help="workers of the topology replaced in the rolling run")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--session", type=float, default=10.0, help="session timeout, seconds")
    ap.add_argument("--dead-after", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--only", choices=("watch",), help="measure only this (nothing is written to the docs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.cluster: needs root", file=sys.stderr)
        return 1
    if not 0 < args.rolling <= args.workers:
        print("bench.cluster: --rolling must be between 1 and --workers", file=sys.stderr)
        return 1
    res = run(args)
    out = REPO / "bench" / "out" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    if args.only:
        print(json.dumps(res) if args.json else f"watch latency: {res['watch_ms']}\nsaved {out}")
        return 0
    md = markdown(res)
    if not args.no_docs:
        write_docs(md)
    print(json.dumps(res) if args.json else md + f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
