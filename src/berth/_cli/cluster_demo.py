"""``berth demo --cluster``: three agents, two topologies, an agent and a ZooKeeper server killed.

It shows what a cluster operator cares about, in order: every worker runs on exactly one node;
an agent that dies leaves its workers running; once its node has been gone past the dead-node
delay the coordinator moves them, and when the agent returns it stops its old copies; killing the
ZooKeeper leader stops nothing and what is written afterwards is applied.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from .._cluster.admin import add_node, init_cluster, read_cluster, remove_cluster
from .._cluster.layout import ZkLayout, new_credential, node_user, write_credential
from .._cluster.placement import parse_topologies
from .._cluster.scheduler import Coordinator
from .._cluster.zk import Connection
from .._core.clusterconfig import ClusterSection
from .._core.config import NodeConfig
from .._exceptions import BerthError
from .._runtimes.base import Runtime
from .._runtimes.registry import make_runtime
from .cluster_views import cluster_rows, cluster_tables
from .demo import wait_until as _until

SESSION_S = 4.0
DEAD_AFTER_S = 6.0
WORKER = "import signal\nsignal.pause()\n"


def topologies(wordcount: int, prefix: str = "") -> dict[str, Any]:
    run = ["python3", "-c", WORKER]
    return {"topologies": {
        f"{prefix}wordcount": {"user": "berth-alice", "command": run, "workers": wordcount, "cpu_percent": 20,
                               "memory_mb": 64},
        f"{prefix}sessions": {"user": "berth-bob", "command": run, "workers": 2, "cpu_percent": 20, "memory_mb": 96}}}


@dataclass
class ZkControl:
    """How the demo kills and restarts a ZooKeeper server: ``scripts/zookeeper`` with its environment."""

    script: str
    env: dict[str, str]

    def _run(self, *args: str) -> str:
        done = subprocess.run([self.script, *args], env={**os.environ, **self.env}, capture_output=True, text=True)
        if done.returncode != 0:
            raise BerthError("demo", f"{self.script} {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip()

    def leader(self) -> int:
        return int(self._run("leader"))

    def kill(self, n: int) -> None:
        self._run("kill", str(n))

    def start(self, n: int) -> None:
        self._run("start-server", str(n))


class _Demo:
    def __init__(self, base: NodeConfig, hosts: str, workdir: Path, root: str, prefix: str, console: Console) -> None:
        self.base, self.hosts, self.dir, self.console = base, hosts, workdir, console
        self.settings = ClusterSection(zk=hosts, root=root, session_timeout_s=SESSION_S, reconnect_max_delay_s=0.5,
                                       state_interval_s=0.2)
        self.layout = ZkLayout(root)
        self.names = [f"{prefix}{i}" for i in (1, 2, 3)]
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.cred = new_credential("berth-coordinator")
        self.admin = Connection(hosts, self.cred, SESSION_S, 0.5, patient=True)
        self.coordinator: Coordinator | None = None
        self._runtimes: dict[str, Runtime] = {}

    def runtime(self, name: str) -> Runtime:
        """The runtime of agent ``name``'s node, as its own berth.toml makes it (any runtime)."""
        if name not in self._runtimes:
            d, n = self.dir / name, self.base.node
            node = n.model_copy(update={"name": name, "local_dir": f"{d}/local", "log_dir": f"{d}/log",
                                        "state_dir": f"{d}/state"})
            self._runtimes[name] = make_runtime(self.base.model_copy(update={"node": node}))
        return self._runtimes[name]

    def running(self, name: str) -> list[str]:
        return sorted(w.worker_id for w in self.runtime(name).list_workers() if w.running)

    def setup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, mode=0o700)
        write_credential(str(self.dir / "coordinator.auth"), self.cred)
        self.admin.start_and_wait(30)
        init_cluster(self.admin, self.layout, self.cred)
        n = self.base.node
        for i, name in enumerate(self.names):
            d = self.dir / name
            d.mkdir()
            cred = new_credential(node_user(name))
            write_credential(str(d / "node.auth"), cred)
            add_node(self.admin, self.layout, self.cred, name, cred.digest_id)
            ports = list(range(6700 + 10 * i, 6705 + 10 * i))
            (d / "berth.toml").write_text(
                f'[node]\nname = "{name}"\nlocal_dir = "{d}/local"\nlog_dir = "{d}/log"\nstate_dir = "{d}/state"\n'
                f'docker_host = "{n.docker_host}"\n[images]\ndefault = "{self.base.images.default}"\n'
                f'[container]\ncgroup_parent = "{self.base.container.cgroup_parent}"\n[supervisor]\ngrace_s = 2.0\n'
                f'[cluster]\nzk = "{self.hosts}"\nroot = "{self.layout.root}"\nsession_timeout_s = {SESSION_S}\n'
                f'reconnect_max_delay_s = 0.5\nstate_interval_s = 0.2\nports = {ports}\nmemory_mb = 400\n'
                f'cpu_percent = 200\n')
            self.start_agent(name)
            self.console.print(f"agent [bold]{name}[/]: ports {ports[0]}-{ports[-1]}, 200% cpu, 400 MiB, "
                               f"socket {d}/state/api.sock, identity {node_user(name)}")
        _until(lambda: all(self.admin.client.exists(self.layout.live(x)) for x in self.names), "the agents")

    def start_agent(self, name: str) -> None:
        d = self.dir / name
        log = open(d / "agent.log", "ab")  # noqa: SIM115 - the child holds it
        self.agents[name] = subprocess.Popen(
            [sys.executable, "-m", "berth", "--config", str(d / "berth.toml"), "agent", "--auth", str(d / "node.auth")],
            stdout=log, stderr=log, start_new_session=True)
        log.close()

    def ps(self) -> None:
        nodes, workers = cluster_rows(read_cluster(self.admin, self.layout))
        for t in cluster_tables(nodes, workers):
            self.console.print(t)

    def converge(self, what: str) -> bool:
        assert self.coordinator is not None
        views = read_cluster(self.admin, self.layout)
        versions = {n: v.doc_version for n, v in views.items() if v.doc_version and v.live}
        conv = self.coordinator.converge(versions, 120)
        self.console.print(f"{what}: " + ("[green]converged[/]" if conv.done else "[red]NOT converged[/]") + " — " +
                           ", ".join(f"{n} {r.get('running', 0)}/{r.get('workers', 0)} running"
                                     for n, r in sorted(conv.nodes.items())))
        return conv.done

    def settle(self) -> None:
        assert self.coordinator is not None
        views = read_cluster(self.admin, self.layout)
        self.coordinator.converge({n: v.doc_version for n, v in views.items() if v.doc_version and v.live}, 120)

    def where(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.names:
            for w in self.running(name):
                out.setdefault(w, []).append(name)
        return out

    def close(self) -> None:
        for name, p in self.agents.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            runtime = self.runtime(name)
            for w in runtime.list_workers():
                runtime.remove(w.worker_id)
            runtime.close()
        if self.coordinator is not None:
            self.coordinator.close()
        try:
            remove_cluster(self.admin, self.layout)
        except Exception as exc:
            self.console.print(f"[yellow]could not remove {self.layout.root}: {exc}")
        self.admin.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_cluster_demo(base: NodeConfig, hosts: str, zk: ZkControl | None, console: Console,
                     workdir: Path | None = None, root: str = "/berth-demo", prefix: str = "demo-n",
                     topology_prefix: str = "") -> int:
    """``topology_prefix`` keeps worker ids (container names) apart from another run on the engine."""
    import logging

    logging.getLogger("kazoo").setLevel(logging.ERROR)  # its reconnection chatter is not the story
    workdir = workdir or Path(base.node.local_dir).parent / "cluster"
    console.rule("[bold]berth demo --cluster")
    console.print(f"ZooKeeper {hosts}, root {root}, engine {base.node.docker_host}, dirs under {workdir}")
    demo = _Demo(base, hosts, workdir, root, prefix, console)
    checks: list[bool] = []
    stop = threading.Event()
    follower: threading.Thread | None = None
    try:
        demo.setup()
        demo.coordinator = coordinator = Coordinator(hosts, demo.cred, demo.settings, DEAD_AFTER_S)
        coordinator.connect()
        mine = coordinator.store_topologies(parse_topologies(topologies(4, topology_prefix)))
        assert coordinator.acquire(blocking=True, timeout_s=30)

        def coordinate() -> None:
            coordinator.follow(stop)

        follower = threading.Thread(target=coordinate, name="demo-coordinator", daemon=True)
        follower.start()
        console.rule("two topologies on three nodes")
        coordinator.wait_for_pass(mine, 120)
        checks.append(demo.converge("wordcount (4 workers, berth-alice) and sessions (2, berth-bob)"))
        demo.ps()
        where = demo.where()
        checks.append(len(where) == 6 and all(len(v) == 1 for v in where.values()))
        console.print(f"every worker on exactly one node: {'yes' if checks[-1] else 'NO'}")

        console.rule("an agent dies")
        victim = demo.names[2]
        before = demo.running(victim)
        demo.agents[victim].send_signal(signal.SIGKILL)
        demo.agents[victim].wait()
        console.print(f"SIGKILLed agent {victim}; its workers {before} keep running: {demo.running(victim) == before}")
        _until(lambda: demo.admin.client.exists(demo.layout.live(victim)) is None, "its session to expire")
        console.print(f"{victim}'s session expired ({SESSION_S:g}s): registration gone; workers still running: "
                      f"{demo.running(victim) == before}")
        checks.append(demo.running(victim) == before)
        _until(lambda: not read_cluster(demo.admin, demo.layout)[victim].workers, "the coordinator to move them")
        console.print(f"{DEAD_AFTER_S:g}s later the coordinator moved them to the other nodes under new ids")
        checks.append(demo.converge("the two remaining nodes"))
        demo.start_agent(victim)
        _until(lambda: not demo.running(victim), "the old copies to stop")
        demo.settle()  # and every live agent to have applied its document: nothing still on its way
        where = demo.where()
        checks.append(len(where) == 6 and all(len(v) == 1 for v in where.values()) and not set(before) & set(where))
        console.print(f"{victim}'s agent is back: it read its new (empty) document and stopped the old copies; "
                      f"duplicates: {'none' if checks[-1] else 'YES'}")

        if zk is not None:
            console.rule("a ZooKeeper server dies")
            running = {n: demo.running(n) for n in demo.names}
            leader = zk.leader()
            zk.kill(leader)
            console.print(f"killed ZooKeeper server {leader}, the leader")
            scaled = coordinator.store_topologies(parse_topologies(topologies(5, topology_prefix)))
            coordinator.wait_for_pass(scaled, 120)
            checks.append(demo.converge("wordcount scaled to 5 after the leader died"))
            checks.append(all(set(running[n]) <= set(demo.running(n)) for n in demo.names))
            console.print(f"no worker stopped: {'yes' if checks[-1] else 'NO'}")
            zk.start(leader)
            console.print(f"server {leader} restarted and rejoined")
        demo.ps()
    except BerthError as exc:
        console.print(f"[red]demo failed: {exc}")
        checks.append(False)
    finally:
        stop.set()
        if demo.coordinator is not None:
            demo.coordinator.wake()
        if follower is not None:
            follower.join(30)
        demo.close()
    console.print(f"cleaned up: agents stopped, workers removed, {root} deleted")
    return 0 if checks and all(checks) else 1


def zk_control_from_env() -> ZkControl | None:
    script = os.environ.get("BERTH_ZK_SCRIPT")
    if not script:
        return None
    env = {k: v for k, v in os.environ.items() if k.startswith("BERTH_ZK_")}
    return ZkControl(script, env)

