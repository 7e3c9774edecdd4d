"""A real engine for the integration tests: started by the project's own script, never mocked.

Where no engine can be had (not root, no docker.io) the tests skip, except under CI, where
they fail: a green CI run must mean the engine was really there.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from berth import BerthError, Node, NodeConfig
from berth._core.config import config_from_mapping
from berth._node.workdirs import remove_tree
from berth._runtimes.runc.config import RuncSection

from ..polling import poll_until as poll_until  # re-exported: the tests import it from here

ROOT = Path(__file__).resolve().parents[2]
SOCKET = os.environ.get("BERTH_TEST_DOCKER_HOST", "unix:///run/berth-dev/docker.sock")
PY_IMAGE = "berth/python:latest"
BB_IMAGE = "berth/busybox:latest"
BASE = Path("/var/lib/berth-test")

USERS = ("berth-alice", "berth-bob", "berth-carol", "berth-dave")  # made by scripts/users


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"integration engine unavailable under CI: {why}")
    pytest.skip(why)


def _may_start_engines() -> bool:
    """Only the test command (scripts/test, which sets BERTH_TEST_ENGINES=start) or CI starts a
    dockerd: a plain ``pytest`` as root on someone's machine uses the engine that runs, or skips."""
    return os.environ.get("BERTH_TEST_ENGINES") == "start" or bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def engine() -> str:
    if os.geteuid() != 0:
        _unavailable("integration tests need root (they start dockerd and chown worker dirs)")
    status = subprocess.run([ROOT / "scripts/engine", "status"], capture_output=True)
    if status.returncode != 0:
        if not _may_start_engines():
            _unavailable("the engine is not running: scripts/engine start (or scripts/test, which starts it)")
        started = subprocess.run([ROOT / "scripts/engine", "start"], capture_output=True, text=True)
        if started.returncode != 0:
            _unavailable(f"cannot start dockerd: {started.stdout[-2000:]}{started.stderr[-2000:]}")
    client = docker.APIClient(base_url=SOCKET, version="auto")
    have = {t for img in client.images() for t in (img.get("RepoTags") or [])}
    if PY_IMAGE not in have or BB_IMAGE not in have:
        built = subprocess.run([ROOT / "scripts/build-images"], capture_output=True, text=True,
                               env={**os.environ, "DOCKER_HOST": SOCKET})
        if built.returncode != 0:
            _unavailable(f"cannot build test images: {built.stdout[-2000:]}{built.stderr[-2000:]}")
    return SOCKET


@pytest.fixture(scope="session")
def users() -> dict[str, pwd.struct_passwd]:
    """Worker users: alice (uid 2101, also in berth-shared), bob (uid 2102), and carol and dave
    (2103, 2104), whose primary group is the same (berth-team)."""
    if os.geteuid() != 0:
        _unavailable("creating test users needs root")
    subprocess.run([ROOT / "scripts/users"], check=True, capture_output=True)
    return {name: pwd.getpwnam(name) for name in USERS}


ROOTFS = Path(os.environ.get("BERTH_DEV_ROOT", "/var/lib/berth-dev"), "rootfs")
RUNC_IMAGES = {PY_IMAGE: str(ROOTFS / "python"), BB_IMAGE: str(ROOTFS / "busybox"),
               "berth/storm:latest": str(ROOTFS / "storm")}
"""The image directories ``scripts/build-images`` makes (the same root filesystems it imports)."""


TEST_CAPACITY = {"memory_mb": 1 << 20, "cpu_percent": 100 * 1024, "pids": 1 << 20}
"""The tests' workers sleep or print: their limits are promised far past this 2-core machine on
purpose (an overcommit); the tests about admission set the capacity they mean."""


def make_config(base: Path, node_name: str, runtime: str = "docker", **container: Any) -> NodeConfig:
    return config_from_mapping({
        "node": {"name": node_name, "local_dir": str(base / "local"), "log_dir": str(base / "log"),
                 "docker_host": SOCKET, "state_dir": str(base / "state"), "runtime": runtime},
        "images": {"default": PY_IMAGE, "allowed": (BB_IMAGE,)},
        "container": {"cgroup_parent": "/berth-test", **container},
        "runc": {"images": RUNC_IMAGES},
        "capacity": TEST_CAPACITY,
    })


def purge_runc(state_dir: Path) -> None:
    """Every runc container under a test's state dir, its shim, and its workers' mounted roots."""
    runc_dir = state_dir / "runc"
    root = runc_dir / "root"
    if root.is_dir():
        listed = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
        for cid in listed.stdout.split():
            subprocess.run(["runc", "--root", str(root), "delete", "--force", cid], capture_output=True)
    if (runc_dir / "shim.sock").exists():
        from berth._runtimes.runc.shimclient import ShimClient, ShimError

        with contextlib.suppress(ShimError, OSError):
            ShimClient(str(runc_dir), "runc", str(root)).stop(force=True)
    for rootfs in runc_dir.glob("workers/*/bundle/rootfs"):
        subprocess.run(["umount", "-l", str(rootfs)], capture_output=True)


@pytest.fixture
def base() -> Iterator[Path]:
    path = BASE / uuid.uuid4().hex[:10]
    path.mkdir(parents=True, mode=0o755)
    os.chmod(BASE, 0o755)
    yield path
    for state in (path, *path.glob("*")):
        purge_runc(state / "state")  # unmounts the workers' roots: nothing below walks into an image
    with contextlib.suppress(BerthError):
        remove_tree(path)  # workers' trees can be deeper than shutil.rmtree can go


@pytest.fixture(scope="session")
def runc_ready(users: dict[str, Any]) -> None:
    """runc, the seccomp profile the runc runtime converts, and the image directories."""
    if shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        _unavailable("runc is not installed (scripts/engine start installs it)")
    if not Path("/usr/share/containers/seccomp.json").exists():
        _unavailable("no /usr/share/containers/seccomp.json (apt-get install golang-github-containers-common)")
    if not all((ROOTFS / f"{n}.stamp").exists() for n in ("python", "busybox")):
        built = subprocess.run([ROOT / "scripts/build-images", "--no-import"], capture_output=True, text=True)
        if built.returncode != 0:
            _unavailable(f"cannot build the image directories: {built.stdout[-2000:]}{built.stderr[-2000:]}")


@pytest.fixture
def runc_config(runc_ready: None, base: Path, node_name: str) -> NodeConfig:
    return make_config(base, node_name, runtime="runc")


@pytest.fixture
def runc_node(runc_config: NodeConfig) -> Iterator[Node]:
    n = Node(runc_config)
    yield n
    n.close()


def purge(node_name: str) -> None:
    client = docker.APIClient(base_url=SOCKET, version="auto")
    for c in client.containers(all=True, filters={"label": f"berth.node={node_name}"}):
        with contextlib.suppress(docker.errors.NotFound):
            client.remove_container(c["Id"], force=True)


@pytest.fixture
def node_name() -> Iterator[str]:
    name = "t" + uuid.uuid4().hex[:10]
    yield name
    purge(name)


@pytest.fixture
def config(engine: str, users: dict[str, Any], base: Path, node_name: str) -> NodeConfig:
    return make_config(base, node_name)


@pytest.fixture
def node(config: NodeConfig) -> Iterator[Node]:
    n = Node(config)
    yield n
    n.close()


def config_toml(config: NodeConfig) -> str:
    """The config as a berth.toml, for tests that run berth in another process."""
    n, c, s = config.node, config.container, config.supervisor
    return (f'[node]\nname = "{n.name}"\nlocal_dir = "{n.local_dir}"\nlog_dir = "{n.log_dir}"\n'
            f'state_dir = "{n.state_dir}"\ndocker_host = "{n.docker_host}"\nruntime = "{n.runtime}"\n'
            f'[images]\ndefault = "{config.images.default}"\n[container]\ncgroup_parent = "{c.cgroup_parent}"\n'
            f'[supervisor]\ngrace_s = {s.grace_s}\nbackoff_base_s = {s.backoff_base_s}\n'
            f'backoff_cap_s = {s.backoff_cap_s}\ncrashloop_after = {s.crashloop_after}\nresync_s = {s.resync_s}\n'
            + "[capacity]\n" + "".join(f"{k} = {v}\n" for k, v in config.capacity.model_dump().items()
                                       if v is not None)
            + "[runc.images]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in RuncSection.of(config).images.items()))


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int, mode: str = "0755") -> Iterator[Path]:
    """A filesystem of ``size_mb`` at ``path`` (made), unmounted after: a disk a test can really fill
    (root gets ENOSPC on a tmpfs like anyone)."""
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode={mode}", "berth-test", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# -- a private engine, for the tests that stop, restart or kill dockerd --------------------------------

PRIVATE_ENV = {"BERTH_DEV_ROOT": "/var/lib/berth-fault", "BERTH_DEV_RUN": "/run/berth-f",
               "BERTH_DEV_LIVE_RESTORE": "1"}
PRIVATE_SOCKET = "unix:///run/berth-f/docker.sock"


class PrivateEngine:
    """A dockerd of the fault tests' own: ``scripts/engine`` with other paths, with live-restore.

    Stopping, restarting or killing it cannot disturb the shared engine at ``SOCKET``, on which
    other people's tests run at the same time.
    """

    socket = PRIVATE_SOCKET

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ROOT / "scripts/engine", command], env={**os.environ, **PRIVATE_ENV},
                              capture_output=True, text=True)

    def _must(self, command: str) -> None:
        done = self.run(command)
        if done.returncode != 0:
            pytest.fail(f"scripts/engine {command} (private engine): {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self) -> None:
        self._must("start")

    def stop(self) -> None:
        """A clean stop (SIGTERM); with live-restore the workers keep running meanwhile."""
        self._must("stop")

    def kill(self) -> None:
        """SIGKILL dockerd, as a crash would; containerd and the workers are left running."""
        pidfile = Path(PRIVATE_ENV["BERTH_DEV_RUN"], "dockerd.pid")
        pid = int(pidfile.read_text())
        os.kill(pid, 9)
        poll_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), f"dockerd {pid} to die", 60)
        # Where init does not reap orphans, the dead dockerd stays a zombie that the pidfile still
        # names, and scripts/engine would take it for a live one; a reaped crash leaves no such pid.
        pidfile.unlink(missing_ok=True)

    def client(self) -> docker.APIClient:
        return docker.APIClient(base_url=self.socket, version="auto")

    def config(self, base: Path, node_name: str, **container: Any) -> NodeConfig:
        cfg = make_config(base, node_name, **container)
        return cfg.model_copy(update={"node": cfg.node.model_copy(update={"docker_host": self.socket})})

    def purge(self, node_name: str | None = None) -> None:
        client = self.client()
        filters = {"label": f"berth.node={node_name}" if node_name else "berth.node"}
        for c in client.containers(all=True, filters=filters):
            with contextlib.suppress(docker.errors.NotFound):
                client.remove_container(c["Id"], force=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="session")
def private_engine(engine: str, users: dict[str, Any]) -> Iterator[PrivateEngine]:
    """Start the private engine (with live-restore) and its images; stop it at the end of the session.

    Held under an exclusive lock: two test runs on one machine (two checkouts) would otherwise stop
    each other's private engine half-way through a test.
    """
    import fcntl

    if not _may_start_engines():
        _unavailable("the fault tests start a dockerd of their own: run them with scripts/test")
    lock = open("/run/berth-fault-tests.lock", "w")  # noqa: SIM115 - held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    eng = PrivateEngine()
    if eng.run("status").returncode == 0 and not eng.client().info().get("LiveRestoreEnabled"):
        eng.stop()  # left over from another run without live-restore: restart it with
    started = eng.run("start")
    if started.returncode != 0:
        _unavailable(f"cannot start the private dockerd: {started.stdout[-2000:]}{started.stderr[-2000:]}")
    env = {k: v for k, v in os.environ.items() if k != "BERTH_DEV_ROOT"}  # reuse the cached root filesystems
    built = subprocess.run([ROOT / "scripts/build-images"], capture_output=True, text=True,
                           env={**env, "DOCKER_HOST": eng.socket})
    if built.returncode != 0:
        eng.stop()
        _unavailable(f"cannot import the test images into the private engine: {built.stdout[-2000:]}"
                     f"{built.stderr[-2000:]}")
    yield eng
    if eng.run("status").returncode == 0:
        eng.purge()
    eng.stop()
    lock.close()


from ._cluster import cluster, private_cluster, private_zookeeper, zookeeper  # noqa: E402, F401 - cluster fixtures
from ._storm import storm_cluster, storm_image  # noqa: E402, F401 - Storm fixtures
