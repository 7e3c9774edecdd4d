"""python -m bench.cluster — cluster mode on a local ensemble: schedule to running, watch latency, agent cost.

    python -m bench.cluster [--workers 30] [--nodes 3] [--samples 300] [--json]

Needs root, the project's engine and ZooKeeper (``scripts/engine``, ``scripts/zookeeper``; both
started if not running, and then left running). Three measurements:

* **schedule -> all running**: ``--nodes`` ``berth agent`` processes, one coordinator pass placing
  ``--workers`` workers, and the time until the engine lists every one of them running (polled
  every 10 ms) and until every node has reported its document applied and its workers running
  (the nodes' state znodes, watched).
* **watch latency**: an agent in this process (its own ZooKeeper session; the writer has another)
  and a document rewritten ``--samples`` times with a new generation and the same workers, so
  nothing launches: from just before ``set`` returns to the moment the agent starts applying the
  version it read (``Agent.apply_listeners``, ``time.time()`` on both sides).
* **agent cost**: RSS and threads of each agent process, read from /proc once it runs its workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ._common import usage

REPO = Path(__file__).resolve().parents[1]
SOCKET = "unix:///run/berth-dev/docker.sock"
FOREVER = "import signal\nsignal.pause()\n"


def _zk_hosts() -> str:
    script = str(REPO / "scripts/zookeeper")
    if subprocess.run([script, "status"], capture_output=True).returncode != 0:
        subprocess.run([script, "start"], check=True, capture_output=True)
    out = subprocess.run([script, "env"], check=True, capture_output=True, text=True).stdout
    return out.strip().removeprefix("export BERTH_ZK=")


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run(workers: int, nodes: int, samples: int) -> dict[str, Any]:
    import docker

    from berth import Node
    from berth._cluster.admin import add_node, init_cluster, remove_cluster
    from berth._cluster.agent import Agent
    from berth._cluster.documents import encode_assignment
    from berth._cluster.layout import ZkLayout, new_credential, node_user, write_credential
    from berth._cluster.placement import parse_topologies
    from berth._cluster.scheduler import Coordinator
    from berth._cluster.zk import Connection
    from berth._core.clusterconfig import ClusterSection
    from berth._core.loading import load_config
    from berth._service.supervisor import Supervisor

    hosts = _zk_hosts()
    run_id = uuid.uuid4().hex[:6]
    base = Path("/var/lib/berth-bench/cluster") / run_id
    base.mkdir(parents=True)
    settings = ClusterSection(zk=hosts, root=f"/bench-{run_id}", session_timeout_s=10, state_interval_s=0.2)
    layout = ZkLayout(settings.root)
    co_cred = new_credential("berth-coordinator")
    admin = Connection(hosts, co_cred, 10)
    admin.start_and_wait(30)
    init_cluster(admin, layout, co_cred)
    engine = docker.APIClient(base_url=SOCKET, version="auto")
    procs: list[subprocess.Popen[bytes]] = []
    names = [f"bench-{run_id}-{i}" for i in range(nodes + 1)]  # the last one: the in-process agent
    result: dict[str, Any] = {"workers": workers, "nodes": nodes, "samples": samples, "zk": hosts}
    local: Agent | None = None
    try:
        for i, name in enumerate(names):
            d = base / name
            d.mkdir()
            cred = new_credential(node_user(name))
            write_credential(str(d / "node.auth"), cred)
            add_node(admin, layout, co_cred, name, cred.digest_id)
            (d / "berth.toml").write_text(
                f'[node]\nname = "{name}"\nlocal_dir = "{d}/local"\nlog_dir = "{d}/log"\nstate_dir = "{d}/state"\n'
                f'docker_host = "{SOCKET}"\n[images]\ndefault = "berth/python:latest"\n'
                f'[container]\ncgroup_parent = "/berth-bench"\n[supervisor]\ngrace_s = 1.0\n'
                f'[cluster]\nzk = "{hosts}"\nroot = "{settings.root}"\nstate_interval_s = 0.2\n'
                f'ports = {list(range(6700, 6700 + workers))}\nmemory_mb = {64 * workers}\n'
                f'cpu_percent = {100 * workers}\n')
            if i < nodes:
                log = open(d / "agent.log", "wb")  # noqa: SIM115 - the child holds it
                procs.append(subprocess.Popen([sys.executable, "-m", "berth", "--config", str(d / "berth.toml"),
                                               "agent", "--auth", str(d / "node.auth"), "--no-api"],
                                              stdout=log, stderr=log, start_new_session=True))
        deadline = time.monotonic() + 60
        while sum(admin.client.exists(layout.live(n)) is not None for n in names[:nodes]) < nodes:
            if time.monotonic() > deadline:
                raise SystemExit("the agents did not register")
            time.sleep(0.05)

        co = Coordinator(hosts, co_cred, settings, 30)
        co.connect()
        topo = {"topologies": {f"bench{run_id}": {"user": "berth-alice", "command": ["python3", "-c", FOREVER],
                                         "workers": workers, "cpu_percent": 10, "memory_mb": 48}}}
        t0 = time.monotonic()
        co.store_topologies(parse_topologies(topo))
        assert co.acquire(blocking=True, timeout_s=30)
        passed = co.run_pass()
        t_written = time.monotonic()
        while True:
            up = sum(1 for n in names[:nodes] for c in engine.containers(filters={"label": f"berth.node={n}"})
                     if c["State"] == "running")
            if up >= workers:
                break
            time.sleep(0.01)
        t_running = time.monotonic()
        conv = co.converge(passed.versions, 120)
        t_reported = time.monotonic()
        result["schedule"] = {"pass_s": round(t_written - t0, 3), "all_running_s": round(t_running - t0, 3),
                              "all_reported_s": round(t_reported - t0, 3), "converged": conv.done,
                              "per_node": {n: r["workers"] for n, r in conv.nodes.items() if r["live"]}}
        result["agent_processes"] = [usage(p.pid) for p in procs]
        co.lock.release()
        co.close()

        # watch latency: an agent in this process, a writer with another session
        me = names[-1]
        cfg = load_config(base / me / "berth.toml")
        from berth._cluster.layout import read_credential

        sup = Supervisor(Node(cfg))
        local = Agent(sup, hosts, read_credential(str(base / me / "node.auth")), settings)
        seen: dict[str, float] = {}
        cond = threading.Condition()

        def on_apply(version: str, at: float) -> None:
            with cond:
                seen[version] = at
                cond.notify_all()

        local.apply_listeners.append(on_apply)
        local.start()
        path = layout.assignment(me)
        latencies = []
        for i in range(samples + 10):
            raw = encode_assignment(me, [], generation=str(i))
            t = time.time()
            stat = admin.client.set(path, raw)
            version = f"{stat.mzxid:#x}"
            with cond:
                assert cond.wait_for(lambda v=version: v in seen, 30), "the agent did not apply"  # type: ignore[misc]
            if i >= 10:  # warm-up
                latencies.append((seen[version] - t) * 1000)
        result["watch_ms"] = {"p50": round(statistics.median(latencies), 2), "p99": round(_pct(latencies, 99), 2),
                              "max": round(max(latencies), 2), "n": len(latencies)}
    finally:
        if local is not None:
            local.stop()
        for p in procs:
            p.terminate()
            p.wait(30)
        for n in names:
            for c in engine.containers(all=True, filters={"label": f"berth.node={n}"}):
                engine.remove_container(c["Id"], force=True)
        remove_cluster(admin, ZkLayout(settings.root))
        admin.close()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.cluster: needs root", file=sys.stderr)
        return 1
    res = run(args.workers, args.nodes, args.samples)
    out = REPO / "bench" / "out" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    if args.json:
        print(json.dumps(res))
    else:
        s, w = res["schedule"], res["watch_ms"]
        print(f"schedule -> all running ({res['workers']} workers, {res['nodes']} nodes): {s['all_running_s']} s "
              f"(pass {s['pass_s']} s; all reported in ZooKeeper {s['all_reported_s']} s)")
        print(f"watch latency (written -> applying), n={w['n']}: p50 {w['p50']} ms, p99 {w['p99']} ms, "
              f"max {w['max']} ms")
        for i, p in enumerate(res["agent_processes"]):
            print(f"agent {i}: RSS {p['VmRSS'] / 1024:.1f} MiB, {p['Threads']} threads")
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
