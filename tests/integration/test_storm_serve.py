"""``berth serve --storm`` in its own process, on the engine and on runc, called as Storm's plugin
calls it over the real unix socket (issue 17 item 2): Storm's supervisor (user ``storm``) made the
worker's dirs; berth launches into them once, with Storm's launcher ownership; the exit comes back
with the worker's own code, once, also when berth was SIGKILLed meanwhile; kill, liveness, memory
from the cgroup, cleanup; and only Storm's supervisor (or root) gets an answer (SO_PEERCRED).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from berth import Node, load_config
from berth._linux import cgroup
from berth._storm.yaml import BERTH_PLUGIN

from .conftest import PY_IMAGE, ROOT, RUNC_IMAGES, SOCKET, poll_until

pytestmark = pytest.mark.integration

TOPO = "wc-1-1700000000"
SYSTEM_PYTHON = "/usr/bin/python3"
"""For what runs as another user (Storm's, a tenant's): the test's own interpreter may be unreadable to it."""
HEARTBEAT = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(43))  # as the JVM's shutdown hooks do: SIGTERM is handled
open("heartbeats/hb", "w").write("alive")
while not os.path.exists("go"):
    time.sleep(0.05)
sys.exit(int(open("go").read() or 0))
"""


def storm_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("storm")
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "-s", "/usr/sbin/nologin",
                        "storm"], check=True)
        return pwd.getpwnam("storm")


class Serve:
    """``berth serve --storm`` as a child process, with the storm.yaml it was given."""

    def __init__(self, base: Path, node_name: str, runtime: str, socket_mode: str = "0660") -> None:
        self.base, self.runtime = base, runtime
        self.storm = storm_user()
        for d in ("home", "local", "log"):
            (base / d).mkdir(exist_ok=True)
        for d in ("local", "log"):
            os.chown(base / d, self.storm.pw_uid, self.storm.pw_gid)
        conf: dict[str, Any] = {
            "storm.home": str(base / "home"), "storm.local.dir": str(base / "local"),
            "storm.log.dir": str(base / "log"), "storm.local.hostname": node_name,
            "storm.resource.isolation.plugin.enable": True, "storm.resource.isolation.plugin": BERTH_PLUGIN,
            "storm.oci.image": PY_IMAGE, "storm.oci.allowed.images": [PY_IMAGE], "storm.oci.nscd.dir": "",
            "storm.oci.cgroup.parent": "berth-test",
            "berth.runtime": runtime, "berth.runc.images": RUNC_IMAGES, "berth.state.dir": str(base / "state"),
            "berth.api.socket": str(base / "run" / "api.sock"),  # the state dir is root's alone
            "berth.api.socket.group": "storm", "berth.api.socket.mode": socket_mode,
            "berth.storm.supervisor.user": "storm",
            "berth.container.max.memory.mb": 1024,
        }
        self.yaml = base / "storm.yaml"
        self.yaml.write_text(yaml.safe_dump(conf))
        self.socket = base / "run" / "api.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "serve.log"

    def start(self) -> Serve:
        env = {**os.environ, "DOCKER_HOST": SOCKET}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(self.yaml), "serve",
                                          "--storm"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        poll_until(lambda: self.answers() or self.proc is None or self.proc.poll() is not None,
                   "berth serve --storm to answer")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return self

    def answers(self) -> bool:
        try:
            with self.client() as c:
                return c.get("/healthz").status_code in (200, 503)
        except httpx.TransportError:
            return False  # not bound yet, or a SIGKILLed one's socket file

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(60)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://berth",
                            timeout=60)

    def setup(self, wid: str, port: int = 6700, user: str = "berth-alice") -> Path:
        """What Storm's supervisor makes before it calls launchWorkerProcess, as the storm user."""
        local, art = self.base / "local", self.base / "log" / "workers-artifacts" / TOPO / str(port)
        root = local / "workers" / wid
        paths = [root / "pids", root / "tmp", root / "heartbeats", art,
                 local / "supervisor" / "stormdist" / TOPO / "shared_by_topology", local / "workers-users"]
        script = ("import os, sys\nfor p in sys.argv[3:]: os.makedirs(p, exist_ok=True)\n"
                  "open(sys.argv[1], 'w').write(sys.argv[2])\n")
        subprocess.run([SYSTEM_PYTHON, "-c", script, str(local / "workers-users" / wid), user,
                        *map(str, paths)], check=True, user=self.storm.pw_uid, group=self.storm.pw_gid,
                       extra_groups=[], umask=0o022)
        return root

    def launch(self, c: httpx.Client, wid: str, port: int = 6700, **kw: Any) -> httpx.Response:
        root = self.setup(wid, port)
        body = {"worker_id": wid, "topology_id": TOPO, "port": port, "user": "berth-alice",
                "command": ["python3", "-c", HEARTBEAT], "env": {"LD_LIBRARY_PATH": "/usr/lib"},
                "memory_mb": 256, "cpu_percent": 50, "target_dir": str(root), **kw}
        return c.post("/storm/v1/workers", json=body)


@pytest.fixture(params=["docker", "runc"])
def serve(request: pytest.FixtureRequest, users: dict[str, Any], base: Path, node_name: str) -> Iterator[Serve]:
    request.getfixturevalue("engine" if request.param == "docker" else "runc_ready")
    s = Serve(base, node_name, request.param).start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill(signal.SIGTERM)


def exits(c: httpx.Client, wait: float = 30) -> list[dict[str, Any]]:
    r = c.get("/storm/v1/exits", params={"wait": wait})
    assert r.status_code == 200, r.text
    got: list[dict[str, Any]] = r.json()["exits"]
    return got


def test_a_storm_worker_runs_in_storms_dirs_and_its_exit_comes_back_once(serve: Serve) -> None:
    storm = serve.storm
    with serve.client() as c:
        r = serve.launch(c, "w-hb")
        assert r.status_code == 201, r.text
        cid = r.json()["container_id"]
        root = serve.base / "local" / "workers" / "w-hb"
        poll_until(lambda: (root / "heartbeats" / "hb").exists(), "the worker's heartbeat")
        st = os.stat(root / "heartbeats" / "hb")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (2101, storm.pw_gid, 0o640)  # umask 0027, setgid dir
        # Storm's supervisor, as its own user, reads the heartbeat (and can delete it: group rw dir)
        read = subprocess.run(["cat", str(root / "heartbeats" / "hb")], user=storm.pw_uid, group=storm.pw_gid,
                              extra_groups=[], capture_output=True, text=True)
        assert read.stdout == "alive", read.stderr
        assert c.get("/storm/v1/workers/w-hb/dead").json() == {"dead": False}
        assert c.get("/storm/v1/workers/w-h/dead").json() == {"dead": True}  # exact id, never a prefix
        mem_path = serve_memory_file(serve, "w-hb")
        before = cgroup.read_int(mem_path)
        reported = c.get("/storm/v1/workers/w-hb/memory").json()["bytes"]
        after = cgroup.read_int(mem_path)
        assert min(before, after) <= reported <= max(before, after) and reported > 0
        free = c.get("/storm/v1/memory").json()
        assert free["free_mb"] > 0 and free["source"] in ("MemAvailable", "cgroup /berth-test")
        assert exits(c, wait=0) == []
        (root / ".go").write_text("7")
        (root / ".go").rename(root / "go")
        [ex] = exits(c)
        assert (ex["worker_id"], ex["container_id"], ex["exit_code"], ex["signal"]) == ("w-hb", cid, 7, None)
        assert c.post("/storm/v1/exits/ack", json={"exits": [{"worker_id": "w-hb", "container_id": cid}]}).json() \
            == {"acked": ["w-hb"]}
        assert exits(c, wait=0) == []
        assert c.get("/storm/v1/workers/w-hb/dead").json() == {"dead": True}
        assert c.post("/storm/v1/workers/w-hb/cleanup").status_code == 200
        assert not root.exists() and (serve.base / "local" / "workers-users" / "w-hb").read_text() == "berth-alice"
        assert c.get("/healthz").json()["exits"] == {"pending": 0, "acked": 0}


def serve_memory_file(serve: Serve, wid: str) -> str:
    """The worker's memory cgroup file, found from its main process as berth's runtimes find it."""
    os.environ.setdefault("DOCKER_HOST", SOCKET)
    with Node(load_config(serve.yaml)) as node:
        pid = node.describe(wid).pid
    assert pid is not None
    return cgroup.memory_file(pid)


def test_kill_is_a_sigterm_and_the_workers_own_code_comes_back(serve: Serve) -> None:
    with serve.client() as c:
        cid = serve.launch(c, "w-k").json()["container_id"]
        poll_until(lambda: (serve.base / "local/workers/w-k/heartbeats/hb").exists(), "the heartbeat")
        assert c.post("/storm/v1/workers/w-k/kill").status_code == 202
        [ex] = exits(c)
        assert (ex["container_id"], ex["exit_code"], ex["signal"]) == (cid, 43, None)  # the worker's own code
        assert c.post("/storm/v1/workers/w-k/force-kill").status_code == 200  # ended already: no error


def test_berth_sigkilled_mid_run_loses_no_worker_and_no_exit(serve: Serve) -> None:
    with serve.client() as c:
        ran = serve.launch(c, "w-run").json()["container_id"]
        ends = serve.launch(c, "w-end", port=6701).json()["container_id"]
        for wid in ("w-run", "w-end"):
            hb = serve.base / f"local/workers/{wid}/heartbeats/hb"
            poll_until(hb.exists, "heartbeats")
    serve.kill(signal.SIGKILL)
    root = serve.base / "local" / "workers" / "w-end"
    (root / ".go").write_text("5")
    (root / ".go").rename(root / "go")
    with serve.client() as c:
        if serve.runtime == "docker":
            import docker

            api = docker.APIClient(base_url=SOCKET, version="auto")
            poll_until(lambda: api.inspect_container("w-end")["State"]["Status"] == "exited", "w-end to end")
        else:
            poll_until(lambda: not (root / "heartbeats" / "hb").exists() or _runc_stopped(serve, "w-end"),
                       "w-end to end")
        serve.start()
        [ex] = exits(c)
        assert (ex["worker_id"], ex["container_id"], ex["exit_code"]) == ("w-end", ends, 5)
        c.post("/storm/v1/exits/ack", json={"exits": [{"worker_id": "w-end", "container_id": ends}]})
        serve.kill(signal.SIGKILL)
        serve.start()  # acknowledged: never handed out again
        assert exits(c, wait=0) == []
        assert c.get("/storm/v1/workers/w-run/dead").json() == {"dead": False}
        (serve.base / "local/workers/w-run/.go").write_text("0")
        (serve.base / "local/workers/w-run/.go").rename(serve.base / "local/workers/w-run/go")
        [ex] = exits(c)
        assert (ex["worker_id"], ex["container_id"], ex["exit_code"]) == ("w-run", ran, 0)  # adopted, not relaunched


def _runc_stopped(serve: Serve, wid: str) -> bool:
    out = subprocess.run(["runc", "--root", str(serve.base / "state" / "runc" / "root"), "state", wid],
                         capture_output=True, text=True)
    return out.returncode != 0 or json.loads(out.stdout)["status"] == "stopped"


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"image": "berth/busybox:latest"}, "image", "not in the node's allowed images"),
    ({"user": "nosuchuser"}, "user", "nosuchuser"),
    ({"memory_mb": 4096}, "memory_mb", "1024"),
])
def test_bad_requests_get_a_clear_error_and_leave_nothing(serve: Serve, change: dict[str, Any], field: str,
                                                          words: str) -> None:
    with serve.client() as c:
        r = serve.launch(c, "w-bad", **change)
        assert r.status_code == 409, r.text
        [item] = r.json()["detail"]
        assert item["loc"][-1] == field and words in item["msg"], item
        assert c.get("/storm/v1/workers/w-bad/dead").json() == {"dead": True}
        assert sorted(os.listdir(serve.base / "local" / "workers" / "w-bad")) == ["heartbeats", "pids", "tmp"]


def test_only_storms_supervisor_or_root_is_answered(users: dict[str, Any], engine: str, base: Path,
                                                     node_name: str) -> None:
    """The socket's mode lets berth-bob connect here; the kernel says who he is, and he is refused."""
    s = Serve(base, node_name, "docker", socket_mode="0666").start()
    try:
        st = os.stat(s.socket)
        assert (st.st_gid, st.st_mode & 0o777) == (grp.getgrnam("storm").gr_gid, 0o666)
        code = ("import json, socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
                "s.sendall(b'GET /storm/v1/hello HTTP/1.1\\r\\nHost: b\\r\\nConnection: close\\r\\n\\r\\n')\n"
                "data = b''.join(iter(lambda: s.recv(65536), b''))\nhead, _, body = data.partition(b'\\r\\n\\r\\n')\n"
                "print(head.split()[1].decode(), json.loads(body)['detail'][0]['msg'])\n")
        bob = users["berth-bob"]
        out = subprocess.run([SYSTEM_PYTHON, "-c", code, str(s.socket)], user=bob.pw_uid, group=bob.pw_gid,
                             extra_groups=[bob.pw_gid], capture_output=True, text=True)
        assert out.stdout.startswith(f"403 uid {bob.pw_uid} may not use the Storm routes"), out.stderr
        with s.client() as c:  # root
            assert c.get("/storm/v1/hello").json()["node"] == node_name
    finally:
        s.kill(signal.SIGTERM)


def test_a_socket_storm_cannot_reach_is_refused_before_anything_starts(users: dict[str, Any], engine: str,
                                                                       base: Path, node_name: str) -> None:
    s = Serve(base, node_name, "docker")
    conf = yaml.safe_load(s.yaml.read_text())
    del conf["berth.api.socket"]  # default: <berth.state.dir>/api.sock, in a directory only root may enter
    s.yaml.write_text(yaml.safe_dump(conf))
    out = subprocess.run([sys.executable, "-m", "berth", "--config", str(s.yaml), "serve", "--storm"],
                         capture_output=True, text=True, env={**os.environ, "DOCKER_HOST": SOCKET}, timeout=120)
    assert out.returncode == 125, out.stderr
    assert out.stderr.startswith(f"error: berth.api.socket: {base}/state/api.sock: Storm's supervisor (user storm) "
                                 f"could not connect: {base}/state (mode 0700"), out.stderr
    assert not (base / "state" / "api.sock").exists()


def test_storms_profiler_command_runs_in_the_workers_container_as_its_user(serve: Serve) -> None:
    """Storm's profiler command is ``[${storm.home}/bin/flight.bash, pid, action, dir]``; a STORM_HOME
    made from Maven's jars has no flight.bash: the plugin is told so, and Storm then logs a failure."""
    with serve.client() as c:
        assert serve.launch(c, "w-prof").status_code == 201
        poll_until((serve.base / "local/workers/w-prof/heartbeats/hb").exists, "the heartbeat")
        r = c.post("/storm/v1/workers/w-prof/profile", json={"command": ["sh", "-c", "id -u; pwd"]})
        assert r.json() == {"exit_code": 0, "output": f"2101\n{serve.base}/local/workers/w-prof\n"}
        flight = str(serve.base / "home" / "bin" / "flight.bash")
        r = c.post("/storm/v1/workers/w-prof/profile", json={"command": [flight, "1", "jstack", "/tmp"]})
        assert r.status_code == 409, r.text
        [item] = r.json()["detail"]
        assert item["loc"] == ["command"] and item["msg"].startswith(f"{flight} does not exist in STORM_HOME")
        r = c.post("/storm/v1/workers/w-prof/profile", json={"command": ["/usr/bin/jstack-nowhere", "1"]})
        assert r.json()["exit_code"] != 0  # not in STORM_HOME: the runtime says it could not run it
        assert c.post("/storm/v1/workers/nope/profile", json={"command": ["true"]}).status_code == 404
