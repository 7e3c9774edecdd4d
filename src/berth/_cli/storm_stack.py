"""A real Storm whose workers berth isolates, on this machine: what ``berth demo --storm`` and the
Storm tests stand up (``scripts/storm`` for Storm, ``berth serve --storm`` for berth).

Storm's supervisor gets, merged into its storm.yaml (``scripts/storm start --supervisor-yaml``),
berth's plugin (its jar in ``extlib-daemon``), berth's keys, and ``supervisor.run.worker.as.user``
with ``berth-worker-launcher``: so each topology runs as its owner and the node has no setuid
program. ``berth serve --storm`` reads that same storm.yaml.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .._core.config import NodeConfig
from .._exceptions import BerthError
from .._node.node import Node
from .._node.stormdirs import StormDirs
from .._runtimes.registry import plugin
from .._storm.yaml import BERTH_PLUGIN, config_from_storm
from .demo import wait_until
from .launcher import install_program

IMAGE = "berth/storm:latest"
ROOTFS = os.path.join(os.environ.get("BERTH_DEV_ROOT", "/var/lib/berth-dev"), "rootfs")
WORDCOUNT = "dev.berth.storm.WordCountTopology"


def berth_lines(instance: str, runtime: str, base: Path, log_dir: str, launcher: str | None = None) -> dict[str, Any]:
    """What berth adds to the storm.yaml of a ``scripts/storm`` instance's supervisor: its plugin,
    its keys (berth's files under ``base``, the socket outside its state dir where Storm's
    supervisor reaches it, a node name of the instance's own: every such supervisor is
    ``localhost``), and with ``launcher`` the topologies' own users through berth-worker-launcher."""
    conf: dict[str, Any] = {
        "storm.resource.isolation.plugin.enable": True, "storm.resource.isolation.plugin": BERTH_PLUGIN,
        "storm.oci.image": IMAGE, "storm.oci.allowed.images": [IMAGE], "storm.oci.nscd.dir": "",
        "storm.oci.cgroup.parent": f"/berth-{instance}", "storm.log.dir": log_dir,
        "berth.runtime": runtime, "berth.node.name": f"storm-{instance}", "berth.state.dir": str(base / "state"),
        "berth.api.socket": str(base / "run" / "api.sock"), "berth.api.socket.group": "storm",
        "berth.storm.supervisor.user": "storm",
        "berth.runc.images": {IMAGE: os.path.join(ROOTFS, "storm")},  # read by the runc runtime only
    }
    if launcher:
        conf.update({"supervisor.run.worker.as.user": True, "supervisor.worker.launcher": launcher})
    return conf


class StormScript:
    """``scripts/storm`` for one instance (its own ports, dirs and ZooKeeper chroot)."""

    def __init__(self, script: str, instance: str) -> None:
        self.script, self.instance = script, instance

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        env = {**os.environ, "BERTH_STORM_INSTANCE": self.instance, "BERTH_STORM_PORT_BASE": "auto"}
        done = subprocess.run([self.script, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise BerthError("storm", f"scripts/storm {' '.join(args)}: {(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout.strip()

    def env(self) -> dict[str, str]:
        out = {}
        for line in self.run("env").splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value.strip('"')
        return out

    def submit(self, name: str, workers: int, user: str) -> None:
        self.run("submit", "--as", user, self.run("jar"), WORDCOUNT, name, str(workers))

    def info(self, name: str) -> dict[str, Any] | None:
        done = self.run("info", name, check=False)
        try:
            found = json.loads(done) if done else None
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def acked(self, name: str) -> int:
        text = self.run("acked", name, check=False)
        return int(text) if text.isdigit() else 0

    def kill(self, name: str) -> None:
        self.run("kill", name, "--wait", "1")


class StormStack:
    """Storm (one supervisor) and ``berth serve --storm`` beside it, under ``workdir``."""

    def __init__(self, script: str, jar: str, instance: str, runtime: str, workdir: Path) -> None:
        self.storm = StormScript(script, instance)
        self.jar, self.instance, self.runtime, self.dir = jar, instance, runtime, workdir
        self.launcher = str(workdir / "berth-worker-launcher")
        self.socket = str(workdir / "run" / "api.sock")
        self.serve_log = workdir / "serve.log"
        self.serve: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.config: NodeConfig | None = None

    def supervisor_yaml(self, log_dir: str) -> dict[str, Any]:
        """What berth adds to Storm's supervisor config: its plugin, its keys, the launcher."""
        return berth_lines(self.instance, self.runtime, self.dir, log_dir, self.launcher)

    def start(self) -> None:
        """Storm first (its supervisor makes the storm.yaml berth reads), then berth."""
        for sub, mode in (("", 0o755), ("run", 0o755), ("extlib", 0o755), ("state", 0o700)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir / sub, mode)
        shutil.copy(self.jar, self.dir / "extlib")
        root = os.environ.get("BERTH_STORM_ROOT", "/var/lib/berth-dev/storm")
        log_dir = f"{root}/instances/{self.instance}/logs/supervisor-1"  # scripts/storm's layout
        (self.dir / "supervisor.yaml").write_text(yaml.safe_dump(self.supervisor_yaml(log_dir)))
        install_program(self.launcher, socket=self.socket)
        self.storm.run("start", "--supervisor-yaml", str(self.dir / "supervisor.yaml"),
                       "--extlib-daemon", str(self.dir / "extlib"))
        self.env = self.storm.env()
        if self.env.get("STORM_SUPERVISOR_LOG_DIRS") != log_dir:
            raise BerthError("storm", f"the supervisor logs to {self.env.get('STORM_SUPERVISOR_LOG_DIRS')}, not "
                             f"{log_dir} as its storm.yaml says")
        data = yaml.safe_load(Path(self.supervisor_conf).read_text())
        config = config_from_storm(data, env={"STORM_HOME": self.env["STORM_HOME"]})
        node = config.node.model_copy(update={"docker_host": self.berth_env()["DOCKER_HOST"]})
        self.config = config.model_copy(update={"node": node})
        self.start_berth()

    @property
    def supervisor_conf(self) -> str:
        return self.env["STORM_SUPERVISOR_CONFS"].split()[0]

    def berth_env(self) -> dict[str, str]:
        return {**os.environ, "STORM_HOME": self.env["STORM_HOME"],
                "DOCKER_HOST": os.environ.get("BERTH_TEST_DOCKER_HOST", "unix:///run/berth-dev/docker.sock")}

    def start_berth(self) -> None:
        berth = os.path.join(os.path.dirname(sys.executable), "berth")
        with open(self.serve_log, "ab") as log:
            self.serve = subprocess.Popen([berth, "--config", self.supervisor_conf, "serve", "--storm"],
                                          env=self.berth_env(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.as_storm("--checksetup").returncode == 0 or self._serve_died(),
                   "berth serve --storm to answer Storm's supervisor", 120)
        if self._serve_died():
            raise BerthError("berth", f"berth serve --storm ended: {self.serve_log.read_text()[-2000:]}")

    def _serve_died(self) -> bool:
        return self.serve is not None and self.serve.poll() is not None

    def stop_berth(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait(timeout=60)
        self.serve = None

    def as_storm(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """The installed launcher, run as Storm's supervisor runs it (user storm, no environment)."""
        return subprocess.run(["setpriv", "--reuid=storm", "--regid=storm", "--init-groups", "--", self.launcher,
                               *argv], env={}, capture_output=True, text=True, timeout=120)

    def node(self) -> Node:
        """A node for ``berth ps`` and ``berth audit`` of Storm's workers."""
        assert self.config is not None
        return Node(self.config, dirs=StormDirs.from_config(self.config))

    def launcher_calls(self) -> list[str]:
        """The worker-launcher's calls berth logged: ``<user> <command> <path> -> exit <code>``."""
        out = []
        for line in self.serve_log.read_text(errors="replace").splitlines():
            _, found, rest = line.partition("berth.launcher INFO worker-launcher (uid ")
            if found and "-> exit" in rest:
                out.append(rest.partition("): ")[2])
        return out

    def stop(self) -> None:
        """berth, its runc monitor (refused, and kept, while a worker runs), Storm's instance."""
        self.stop_berth()
        if self.config is not None:
            with contextlib.suppress(BerthError):
                plugin(self.config.node.runtime).stop_helpers(self.config)
        with contextlib.suppress(BerthError, subprocess.TimeoutExpired):
            self.storm.run("purge")
