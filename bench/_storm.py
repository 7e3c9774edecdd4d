"""One Storm cluster of ``scripts/storm``, driven from Python: for the Storm tests and ``bench.storm``.

Every call runs ``scripts/storm`` for this cluster's instance (its own dirs, ports and ZooKeeper
chroot), so a test or a bench run never touches another's cluster; ``purge`` removes all of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "storm"
PACKAGE = "dev.berth.storm"
WORDCOUNT = f"{PACKAGE}.WordCountTopology"
HOSTILE = f"{PACKAGE}.HostileTopology"
NO_SUCH_TOPOLOGY = 3
"""scripts/storm's exit status for a topology Nimbus does not know."""


class StormError(Exception):
    """scripts/storm failed; the message holds the command and its output's tail."""


@dataclass
class StormCluster:
    """A ``scripts/storm`` instance. ``instance`` names it (default: a fresh one); ``port_base``
    ``auto`` lets the script pick free ports; ``env`` adds variables (BERTH_STORM_*)."""

    instance: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:10])
    port_base: str = "auto"
    env: dict[str, str] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "BERTH_STORM_INSTANCE": self.instance, "BERTH_STORM_PORT_BASE": self.port_base,
                **self.env}

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(SCRIPT), *args], env=self._env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise StormError(f"scripts/storm {' '.join(args)} (instance {self.instance}) exited "
                             f"{done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done

    def start(self, supervisors: int = 1, supervisor_yaml: Path | None = None,
              extlib_daemon: Path | None = None) -> None:
        args = ["start", "--supervisors", str(supervisors)]
        if supervisor_yaml is not None:
            args += ["--supervisor-yaml", str(supervisor_yaml)]
        if extlib_daemon is not None:
            args += ["--extlib-daemon", str(extlib_daemon)]
        self.run(*args)

    def stop(self) -> None:
        self.run("stop")

    def purge(self) -> None:
        self.run("purge")

    def daemon(self, action: str, name: str) -> None:
        """``start``, ``stop`` or ``kill`` one daemon (``nimbus``, ``supervisor-1``, ...)."""
        self.run(f"{action}-daemon", name)

    def pid(self, daemon: str) -> int | None:
        """The pid of ``nimbus`` or ``supervisor-N``; None if it does not run."""
        done = self.run("pid", daemon, check=False)
        return int(done.stdout) if done.returncode == 0 else None

    def environment(self) -> dict[str, str]:
        """What ``scripts/storm env`` exports (STORM_HOME, STORM_SUPERVISOR_LOCAL_DIRS, ports, ...)."""
        out = self.run("env").stdout
        return {m.group(1): m.group(2).strip('"') for m in re.finditer(r"^export (\w+)=(.*)$", out, re.M)}

    @property
    def jar(self) -> str:
        """The test topologies' jar (built by scripts/storm, cached)."""
        return self.run("jar").stdout.strip()

    def submit(self, cls: str, name: str, *args: str, user: str | None = None, jar: str | None = None,
               conf: dict[str, str] | None = None) -> None:
        """Submit topology ``name`` by running ``cls`` (from the test jar unless ``jar``), as ``user``
        (one of Storm's users; default: the daemons' own, ``storm``), with ``conf`` as ``-c k=v``."""
        argv = ["submit", *(["--as", user] if user else []), jar or self.jar, cls, name, *args]
        for k, v in (conf or {}).items():
            argv += ["-c", f"{k}={v}"]
        self.run(*argv)

    def kill(self, name: str, wait_s: int = 0) -> None:
        self.run("kill", name, "--wait", str(wait_s))

    def topologies(self) -> list[dict[str, Any]]:
        parsed: list[dict[str, Any]] = json.loads(self.run("list").stdout)
        return parsed

    def info(self, name: str) -> dict[str, Any] | None:
        """The topology as Nimbus reports it (id, owner, status, workers, acked); None if unknown."""
        done = self.run("info", name, check=False)
        if done.returncode == NO_SUCH_TOPOLOGY:
            return None
        if done.returncode != 0:
            raise StormError(f"scripts/storm info {name}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    def acked(self, name: str) -> int:
        """The spouts' acked tuples over the topology's life, as Nimbus last heard (every 5 s)."""
        return int(self.run("acked", name).stdout.strip())

    def supervisors(self) -> list[dict[str, Any]]:
        parsed: list[dict[str, Any]] = json.loads(self.run("cluster").stdout)
        return parsed


def worker_pids(topology_id: str) -> list[int]:
    """The worker JVMs (and their LogWriters) of a topology on this machine, from /proc."""
    want = f"-Dstorm.id={topology_id}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if want in p.joinpath("cmdline").read_bytes().split(b"\0"):
                found.append(int(p.name))
        except OSError:
            continue
    return found
