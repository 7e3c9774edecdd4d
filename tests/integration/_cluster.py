"""A real ZooKeeper ensemble and real ``berth agent`` processes for the cluster tests.

The shared ensemble is the one ``scripts/zookeeper`` runs (``scripts/test`` starts it); each test
keeps its cluster under a root znode of its own, so runs never touch each other. Tests that kill
servers or break the quorum take a private ensemble (other ports and dirs) under a lock, as the
fault tests do with their private engine. Agents are separate processes (they are SIGKILLed and
SIGSTOPped); waiting is on ZooKeeper watches, or bounded polling of what another process owns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import pytest
from kazoo.exceptions import NoNodeError

from berth._cluster.admin import NodeView, add_node, init_cluster, read_cluster, remove_cluster
from berth._cluster.cache import read_agent_status
from berth._cluster.layout import Credential, ZkLayout, new_credential, node_user, write_credential
from berth._cluster.placement import parse_topologies
from berth._cluster.scheduler import Coordinator, PassResult
from berth._cluster.zk import Connection
from berth._core.clusterconfig import ClusterSection

from .conftest import PY_IMAGE, ROOT, SOCKET, _unavailable, poll_until, purge

WAIT = 120.0
SESSION_S = 4.0
FOREVER = "import signal\nsignal.pause()\n"
PRIVATE_ZK = {"BERTH_ZK_ROOT": "/var/lib/berth-zk-fault", "BERTH_ZK_RUN": "/run/berth-zk-f", "BERTH_ZK_PORT": "2291"}


class Ensemble:
    """``scripts/zookeeper`` with an environment: the shared ensemble, or the private one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "scripts/zookeeper"), *args], env=self.env, capture_output=True,
                              text=True, timeout=180)

    def must(self, *args: str) -> str:
        done = self.run(*args)
        if done.returncode != 0:
            pytest.fail(f"scripts/zookeeper {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    @property
    def hosts(self) -> str:
        return self.must("env").strip().removeprefix("export BERTH_ZK=")

    def leader(self) -> int | None:
        done = self.run("leader")
        return int(done.stdout.strip()) if done.returncode == 0 else None


@pytest.fixture(scope="session")
def zookeeper() -> Ensemble:
    if os.geteuid() != 0:
        _unavailable("the cluster tests need root (they start ZooKeeper and dockerd)")
    ens = Ensemble()
    if ens.run("status").returncode != 0:
        started = ens.run("start")
        if started.returncode != 0:
            _unavailable(f"cannot start ZooKeeper: {started.stdout[-2000:]}{started.stderr[-2000:]}")
    return ens  # shared: left running for the other runs on this machine, as the engine is


@pytest.fixture(scope="session")
def private_zookeeper() -> Iterator[Ensemble]:
    """An ensemble of this run's own, for the tests that kill servers; stopped at the end."""
    if os.geteuid() != 0:
        _unavailable("the cluster tests need root")
    lock = open("/run/berth-zk-fault-tests.lock", "w")  # noqa: SIM115 - held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    ens = Ensemble(PRIVATE_ZK)
    started = ens.run("start")
    if started.returncode != 0:
        _unavailable(f"cannot start the private ZooKeeper: {started.stdout[-2000:]}{started.stderr[-2000:]}")
    yield ens
    ens.run("stop")
    lock.close()


def worker_topology(n: int, user: str = "berth-alice", memory_mb: int = 48, **kw: Any) -> dict[str, Any]:
    return {"user": user, "command": ["python3", "-c", FOREVER], "workers": n, "cpu_percent": 10,
            "memory_mb": memory_mb, **kw}


class Agent:
    def __init__(self, name: str, config: Path, auth: Path, state_dir: Path) -> None:
        self.name, self.config, self.auth, self.state_dir = name, config, auth, state_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def status(self) -> dict[str, Any]:
        return read_agent_status(self.state_dir / "cluster") or {}

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=60)
        self.proc = None


class Cluster:
    """One test's cluster: its own root znode, coordinator identity, nodes and agents."""

    def __init__(self, ensemble: Ensemble, base: Path) -> None:
        self.ensemble, self.base = ensemble, base
        self.hosts = ensemble.hosts
        self.prefix = "t" + uuid.uuid4().hex[:8]
        self.settings = ClusterSection(zk=self.hosts, root="/" + self.prefix, session_timeout_s=SESSION_S,
                                       reconnect_max_delay_s=0.5, state_interval_s=0.2)
        self.layout = ZkLayout(self.settings.root)
        self.cred = new_credential("berth-coordinator")
        write_credential(str(base / "coordinator.auth"), self.cred)
        self.admin = Connection(self.hosts, self.cred, SESSION_S, 0.5, patient=True)
        self.admin.start_and_wait(30)
        init_cluster(self.admin, self.layout, self.cred)
        self.agents: dict[str, Agent] = {}
        self.coordinators: list[Coordinator] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.docker = docker.APIClient(base_url=SOCKET, version="auto")

    def node(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def add_node(self, short: str, ports: tuple[int, ...] = tuple(range(6700, 6710)), memory_mb: int = 2000,
                 cpu_percent: int = 400, **supervisor: float) -> Agent:
        name, d = self.node(short), self.base / short
        d.mkdir()
        cred = new_credential(node_user(name))
        write_credential(str(d / "node.auth"), cred)
        add_node(self.admin, self.layout, self.cred, name, cred.digest_id)
        cfg = d / "berth.toml"
        cfg.write_text(
            f'[node]\nname = "{name}"\nlocal_dir = "{d}/local"\nlog_dir = "{d}/log"\nstate_dir = "{d}/state"\n'
            f'docker_host = "{SOCKET}"\n[images]\ndefault = "{PY_IMAGE}"\n[container]\ncgroup_parent = "/berth-test"\n'
            f'[supervisor]\ngrace_s = 1.0\nbackoff_base_s = 0.2\nbackoff_cap_s = 2.0\nresync_s = 0.5\n'
            + "".join(f"{k} = {v}\n" for k, v in supervisor.items()) +
            f'[cluster]\nzk = "{self.hosts}"\nroot = "{self.settings.root}"\nsession_timeout_s = {SESSION_S}\n'
            f'reconnect_max_delay_s = 0.5\nstate_interval_s = 0.2\nports = {list(ports)}\n'
            f'memory_mb = {memory_mb}\ncpu_percent = {cpu_percent}\n')
        self.agents[short] = Agent(name, cfg, d / "node.auth", d / "state")
        return self.agents[short]

    def start_agent(self, short: str, *args: str) -> Agent:
        a = self.agents[short]
        log = open(self.base / short / "agent.log", "ab")  # noqa: SIM115 - the child holds it
        a.proc = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(a.config), "agent",
                                   "--auth", str(a.auth), *args], stdout=log, stderr=log, start_new_session=True)
        log.close()
        return a

    def log(self, short: str) -> str:
        return (self.base / short / "agent.log").read_text(errors="replace")[-3000:]

    # -- the coordinator -------------------------------------------------------------------------

    def berth(self, *args: str) -> list[str]:
        """A ``berth`` command line with the coordinator's identity and this cluster's settings."""
        cfg = self.base / "coordinator.toml"
        if not cfg.exists():
            cfg.write_text(f'[cluster]\nzk = "{self.hosts}"\nroot = "{self.settings.root}"\n'
                           f'session_timeout_s = {SESSION_S}\nreconnect_max_delay_s = 0.5\n')
        return [sys.executable, "-m", "berth", "--config", str(cfg), *args[:2],
                "--auth", str(self.base / "coordinator.auth"), *args[2:]]

    def start_coordinator(self, tag: str, *args: str) -> subprocess.Popen[bytes]:
        """``berth schedule --follow`` in a process of its own (it is SIGKILLed); output in ``<tag>.log``."""
        log = open(self.base / f"{tag}.log", "ab")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen(self.berth("schedule", "--follow", *args),
                                stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def output(self, tag: str) -> str:
        return (self.base / f"{tag}.log").read_text(errors="replace")

    def store(self, topologies: dict[str, Any], co: Coordinator | None = None) -> str | None:
        """Store the topologies (named as ``schedule`` names them) for the active coordinator."""
        co = co or self.coordinator()
        named = {f"{self.prefix}-{k}": v for k, v in topologies.items()}
        return co.store_topologies(parse_topologies({"topologies": named}))

    def coordinator(self, dead_after_s: float = 30.0) -> Coordinator:
        co = Coordinator(self.hosts, self.cred, self.settings, dead_after_s)
        co.connect(30)
        self.coordinators.append(co)
        return co

    def schedule(self, topologies: dict[str, Any], co: Coordinator | None = None) -> PassResult:
        """Topology ``wc`` becomes ``<prefix>-wc``: worker ids (container names) are unique per
        engine, and other runs on this machine use the same engine."""
        co = co or self.coordinator()
        named = {f"{self.prefix}-{k}": v for k, v in topologies.items()}
        co.store_topologies(parse_topologies({"topologies": named}))
        assert co.acquire(blocking=True, timeout_s=30), "no coordinator lock"
        try:
            return co.roll_out(WAIT)  # as berth schedule does: passes until no rolling replacement is left
        finally:
            co.lock.release()
            co.lock = None

    def converge(self, versions: Mapping[str, str], co: Coordinator | None = None) -> dict[str, dict[str, Any]]:
        if co is None:
            co = self.coordinators[0] if self.coordinators else self.coordinator()
        conv = co.converge(versions, WAIT)
        assert conv.done, f"not converged: {conv.nodes}\n" + "\n".join(
            f"--- {s}:\n{self.log(s)}" for s in self.agents)
        return conv.nodes

    def views(self) -> dict[str, NodeView]:
        return read_cluster(self.admin, self.layout)

    def node_state(self, short: str) -> dict[str, Any]:
        data, _ = self.admin.client.get(self.layout.state(self.node(short)))
        return dict(json.loads(data))

    def until_znode(self, path: str, present: bool, what: str, timeout: float = WAIT) -> None:
        """Wait on an exists watch (ZooKeeper tells us), not by polling."""
        changed = threading.Event()
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while (self.admin.client.exists(path, watch=lambda _e: changed.set()) is not None) != present:
                changed.wait(timeout)
                changed.clear()
                if deadline.is_set():
                    pytest.fail(f"timed out waiting for {what}")
        finally:
            timer.cancel()

    def until_state(self, short: str, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Wait on the node's state znode (a data watch) until ``pred`` holds for its report."""
        path = self.layout.state(self.node(short))
        changed = threading.Event()
        deadline = threading.Event()
        timer = threading.Timer(WAIT, deadline.set)
        timer.start()
        try:
            while True:
                data, _ = self.admin.client.get(path, watch=lambda _e: changed.set())
                st = json.loads(data)
                if pred(st):
                    return dict(st)
                changed.wait(WAIT)
                changed.clear()
                if deadline.is_set():
                    pytest.fail(f"timed out waiting for {what}: {st}\n{self.log(short)}")
        finally:
            timer.cancel()

    # -- the engine ------------------------------------------------------------------------------

    def containers(self, short: str) -> dict[str, tuple[str, bool]]:
        """The node's workers on the engine: worker id -> (container id, running)."""
        out = {}
        for c in self.docker.containers(all=True, filters={"label": f"berth.node={self.node(short)}"}):
            out[c["Labels"]["berth.worker"]] = (c["Id"], c["State"] == "running")
        return out

    def running(self, short: str) -> dict[str, str]:
        return {w: cid for w, (cid, up) in self.containers(short).items() if up}

    def until_running(self, short: str, pred: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        poll_until(lambda: pred(self.running(short)), what, WAIT, every=0.1)
        return self.running(short)

    def topology_of(self, worker_id: str) -> str:
        return worker_id.rsplit("-", 1)[0].removeprefix(self.prefix + "-")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(60)
        for a in self.agents.values():
            with contextlib.suppress(Exception):
                a.stop(signal.SIGKILL)
            purge(a.name)
        for co in self.coordinators:
            co.close()

        def remove_tree() -> None:
            with contextlib.suppress(NoNodeError, Exception):
                remove_cluster(self.admin, self.layout)

        t = threading.Thread(target=remove_tree, daemon=True)  # bounded: the ensemble may be down
        t.start()
        t.join(30)
        self.admin.close()


@pytest.fixture
def cluster(zookeeper: Ensemble, engine: str, users: Any, base: Path) -> Iterator[Cluster]:
    c = Cluster(zookeeper, base)
    yield c
    c.close()


@pytest.fixture
def private_cluster(private_zookeeper: Ensemble, engine: str, users: Any, base: Path) -> Iterator[Cluster]:
    c = Cluster(private_zookeeper, base)
    yield c
    c.close()


class Partition:
    """TCP relays in front of the ensemble's servers: an agent that reaches ZooKeeper through them
    can be cut off (its connections closed, new ones closed as soon as accepted) while everyone
    else still reaches the ensemble: a network partition of one node, on one machine."""

    def __init__(self, hosts: str) -> None:
        self.up = True
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listeners: list[socket.socket] = []
        ports = []
        for hp in hosts.split(","):
            host, port = hp.rsplit(":", 1)
            srv = socket.create_server(("127.0.0.1", 0))
            self._listeners.append(srv)
            ports.append(srv.getsockname()[1])
            threading.Thread(target=self._accept, args=(srv, (host, int(port))), daemon=True).start()
        self.hosts = ",".join(f"127.0.0.1:{p}" for p in ports)

    def _accept(self, srv: socket.socket, target: tuple[str, int]) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._socks |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def heal(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        for srv in self._listeners:
            srv.close()


def login(hosts: str, user: str, password: str) -> Connection:
    conn = Connection(hosts, Credential(user, password), SESSION_S, 0.5)
    conn.start_and_wait(30)
    return conn
