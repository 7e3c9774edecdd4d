"""A Storm cluster whose supervisor launches its workers through berth: the plugin's jar in
``extlib-daemon/``, its storm.yaml lines merged into the supervisor's, and ``berth serve --storm``
beside it, reading that same storm.yaml. For the Storm tests and ``bench.storm``.

berth runs as root in a process of its own (as in production, beside the supervisor): it can be
SIGKILLed and started again mid-run; its socket lies outside its state dir, where Storm's
supervisor (user ``storm``) can reach it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from berth._cli.storm_stack import IMAGE as IMAGE  # re-exported: the Storm tests take it from here
from berth._cli.storm_stack import berth_lines

from ._storm import REPO, StormCluster, StormError, pids_with_arg

JAR = REPO / "storm-plugin" / "target" / "berth-storm-plugin.jar"
STORM_ROOT = Path(os.environ.get("BERTH_STORM_ROOT", "/var/lib/berth-dev/storm"))
DOCKER = os.environ.get("BERTH_TEST_DOCKER_HOST", "unix:///run/berth-dev/docker.sock")


def plugin_jar() -> Path:
    """The plugin's jar, built (without its tests: scripts/test runs them) if it is not there."""
    if not JAR.exists():
        done = subprocess.run(["mvn", "-B", "-q", "-f", str(REPO / "storm-plugin" / "pom.xml"), "package",
                               "-DskipTests"], capture_output=True, text=True)
        if done.returncode != 0:
            raise StormError(f"cannot build the plugin: {done.stdout[-3000:]}{done.stderr[-3000:]}")
    return JAR


@dataclass
class BerthStorm:
    """Nimbus, one supervisor with berth's plugin, and ``berth serve --storm`` on ``runtime``.

    ``base`` is berth's own directory (state, socket, the plugin's jar dir, berth's log);
    ``extra`` adds storm.yaml lines for the supervisor (and so for berth)."""

    runtime: str
    base: Path
    extra: dict[str, Any] = field(default_factory=dict)
    users: str = "berth-alice berth-bob"
    cluster: StormCluster = field(default_factory=lambda: StormCluster(instance="b" + uuid.uuid4().hex[:10]))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def instance_dir(self) -> Path:
        return STORM_ROOT / "instances" / self.cluster.instance

    @property
    def local_dir(self) -> Path:
        return self.instance_dir / "supervisor-1"

    @property
    def log_dir(self) -> Path:
        return self.instance_dir / "logs" / "supervisor-1"

    @property
    def storm_yaml(self) -> Path:
        """The supervisor's storm.yaml, which berth is given too."""
        return self.instance_dir / "daemon" / "supervisor-1" / "storm.yaml"

    @property
    def socket(self) -> Path:
        return self.base / "run" / "api.sock"

    @property
    def node_name(self) -> str:
        return f"storm-{self.cluster.instance}"

    @property
    def berth_log(self) -> Path:
        return self.base / "berth.log"

    def lines(self) -> dict[str, Any]:
        return {**berth_lines(self.cluster.instance, self.runtime, self.base, str(self.log_dir)), **self.extra}

    def prepare(self) -> tuple[Path, Path]:
        """What ``scripts/storm start`` is given: the supervisor's storm.yaml lines and the
        directory holding the plugin's jar."""
        ext = self.base / "ext"
        ext.mkdir(parents=True, exist_ok=True)
        shutil.copy2(plugin_jar(), ext / JAR.name)
        sup = self.base / "supervisor.yaml"
        sup.write_text(yaml.safe_dump(self.lines()))
        self.cluster.env["BERTH_STORM_USERS"] = self.users
        return sup, ext

    def start(self, berth: bool = True) -> BerthStorm:
        """The cluster (its supervisor loads the plugin), then berth unless ``berth`` is False."""
        sup, ext = self.prepare()
        self.cluster.start(supervisor_yaml=sup, extlib_daemon=ext)
        if berth:
            self.start_berth()
        return self

    def start_berth(self, timeout: float = 120) -> None:
        env = {**os.environ, "DOCKER_HOST": DOCKER, "STORM_HOME": str(self.instance_dir / "home")}
        with self.berth_log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(self.storm_yaml), "serve",
                                          "--storm"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise StormError(f"berth serve --storm did not start:\n{self.berth_log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop_berth(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def answers(self) -> bool:
        import httpx

        try:
            with self.client() as c:
                return c.get("/healthz").status_code in (200, 503)
        except httpx.TransportError:
            return False

    def client(self) -> Any:
        import httpx

        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://berth", timeout=60)

    def processes(self) -> dict[str, int]:
        """berth's own processes on the node, by label: ``berth serve``; on runc berth-shim (one
        for all workers), on docker each of this node's workers' ``containerd-shim`` (the engine's
        monitor per container; the engine itself is shared, not counted)."""
        found: dict[str, int] = {}
        if self.proc is not None and self.proc.poll() is None:
            found["berth serve"] = self.proc.pid
        for pid in pids_with_arg(str(self.base / "state" / "runc")):  # berth-shim's --dir
            found["berth-shim"] = pid
        if self.runtime == "docker":
            for n, cid in enumerate(_engine_containers(self.node_name), 1):
                for pid in pids_with_arg(cid):  # the engine's containerd-shim ... -id <cid>
                    found[f"containerd-shim {n}"] = pid
        return found

    def supervisor_log(self) -> str:
        try:
            return (self.log_dir / "supervisor.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def berth_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``berth`` with the supervisor's storm.yaml, as an operator runs it on the node."""
        env = {**os.environ, "DOCKER_HOST": DOCKER, "STORM_HOME": str(self.instance_dir / "home")}
        return subprocess.run([sys.executable, "-m", "berth", "--config", str(self.storm_yaml), *args],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=300)

    def purge(self) -> None:
        """The cluster (its daemons, dirs, chroot), berth, and every container berth made for it."""
        try:
            self.cluster.purge()
        finally:
            self.stop_berth()
            self.remove_containers()

    def remove_containers(self) -> None:
        """Every container berth made for this cluster, on either runtime, and berth-shim."""
        runc_root = self.base / "state" / "runc" / "root"
        if runc_root.is_dir():
            listed = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True)
            for cid in listed.stdout.split():
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid], capture_output=True)
            self.berth_cli("shim", "stop", "--force")
        _remove_engine_containers(self.node_name)


def _engine_containers(node_name: str) -> list[str]:
    """The ids of the engine's containers of this node (none where no engine answers)."""
    try:
        import docker

        api = docker.APIClient(base_url=DOCKER, version="auto")
        return [str(c["Id"]) for c in api.containers(all=True, filters={"label": f"berth.node={node_name}"})]
    except Exception:  # no engine (a runc-only machine)
        return []


def _remove_engine_containers(node_name: str) -> None:
    ids = _engine_containers(node_name)
    if ids:
        import docker

        api = docker.APIClient(base_url=DOCKER, version="auto")
        for cid in ids:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(cid, force=True)
