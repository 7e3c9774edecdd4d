"""The four launchers, on the same image, the same plan and so the same limits.

- ``berth``: ``Node.launch(spec, on_exit)`` with the docker runtime; exits come from berth's one
  event-stream watcher thread.
- ``storm_style``: what Storm's ``DockerManager.launchWorkerProcess`` does: the worker's directories
  and script first (as Storm's supervisor does), then ``docker run`` with Storm's argv exactly
  (``docker_run_argv(plan, berth_values(plan))``: Storm's flags) and waited for, then one thread per worker that runs
  ``docker wait <worker_id>`` and hands that process's exit code to the callback. (Storm runs the
  docker commands through its setuid worker-launcher; the bench is root and runs them directly.)
- ``sdk``: the raw Docker SDK: ``create_container_from_config(engine_create_body(plan))`` then
  ``start``; nothing else. Exit: one blocking ``APIClient.wait`` per worker, each in its own thread.
- ``runc``: ``runc run -d`` of a bundle whose config.json is ``oci_config(plan, rootfs)``. The
  bench process is a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so each container's init
  becomes its child when ``runc run -d`` exits; one watcher thread holds a pidfd per worker
  (pidfd_open) in an epoll set and reaps with ``waitid(P_PIDFD)``, which gives the real status.

Every launcher creates the worker's directories and script (berth inside ``launch``, the others
with berth's own ``berth.prepare_worker_dirs``), so the mount sources exist and the same work is timed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from berth import (
    ExitRecord,
    HostFacts,
    Node,
    NodeConfig,
    Plan,
    WorkerSpec,
    docker_run_argv,
    engine_create_body,
    plan_for,
    prepare_worker_dirs,
    remove_worker_dirs,
)
from berth._core.config import config_from_mapping
from berth._core.layout import worker_root
from berth._runtimes.docker.render import berth_values

from ._common import CGROUP_PARENT, IMAGE, RUNC_ROOT, USER, WORKER_CMD, BenchError, Stopping

ExitFn = Callable[[str, int], None]
"""Called once with (worker_id, exit code as the launcher knows it)."""


def make_config(run_dir: Path, node: str, url: str) -> NodeConfig:
    return config_from_mapping({
        "node": {"name": node, "local_dir": str(run_dir / "local"), "log_dir": str(run_dir / "log"),
                 "docker_host": url, "state_dir": str(run_dir / "state" / node)},
        "images": {"default": IMAGE},
        "container": {"cgroup_parent": CGROUP_PARENT, "memory_mb": 256, "cpu_percent": 100, "pids_limit": 256},
        # Hundreds of idle workers, each with the limits above: promised past the machine on purpose.
        "capacity": {"memory_mb": 1 << 20, "cpu_percent": 100 * 4096, "pids": 1 << 20},
    })


def make_spec(worker_id: str, port: int) -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, topology_id="bench", port=port, user=USER, command=WORKER_CMD)


class Launcher:
    """Launch a worker and report its exit; read its memory; remove it."""

    name = "?"

    def __init__(self, config: NodeConfig, url: str, host: HostFacts) -> None:
        self.config = config
        self.url = url
        self.host = host

    def worker_root(self, worker_id: str) -> Path:
        return Path(worker_root(self.config, worker_id))

    def launch(self, spec: WorkerSpec, on_exit: ExitFn) -> None:
        raise NotImplementedError

    def memory_read(self, worker_id: str) -> int:
        raise NotImplementedError

    def remove(self, worker_id: str) -> None:
        raise NotImplementedError

    def worker_pids(self) -> set[int]:
        """Processes that are workers (so not the launcher's helpers) though they are its children."""
        return set()

    def monitor_pids(self) -> list[int]:
        """Helper processes that are not this process's descendants (berth-shim): counted as helpers."""
        return []

    def close(self) -> None:
        pass

    # -- shared by the launchers that are not berth ------------------------------------------

    def _plan_and_dirs(self, spec: WorkerSpec) -> Plan:
        if Stopping.event.is_set():
            raise BenchError("stopping")
        plan = plan_for(spec, self.config, self.host)
        prepare_worker_dirs(plan, [])
        return plan

    def _remove_dirs(self, worker_id: str) -> None:
        remove_worker_dirs(self.config, worker_id)


class BerthLauncher(Launcher):
    name = "berth"

    def __init__(self, config: NodeConfig, url: str, host: HostFacts) -> None:
        super().__init__(config, url, host)
        self.node = Node(config, host=host)

    def launch(self, spec: WorkerSpec, on_exit: ExitFn) -> None:
        if Stopping.event.is_set():
            raise BenchError("stopping")
        def report(rec: ExitRecord) -> None:
            on_exit(rec.worker_id, -1 if rec.exit_code is None else rec.exit_code)

        self.node.launch(spec, on_exit=report)

    def memory_read(self, worker_id: str) -> int:
        return self.node.memory_usage(worker_id)

    def remove(self, worker_id: str) -> None:
        self.node.cleanup(worker_id)

    def close(self) -> None:
        self.node.close()


class BerthRuncLauncher(BerthLauncher):
    """berth with the runc runtime: the same ``Node.launch``; exits come from berth-shim, the
    node's one monitor process, over its socket. The shim is started here, before the bare runc
    launcher makes this process a subreaper (it would otherwise become this process's child)."""

    name = "berth_runc"

    def __init__(self, config: NodeConfig, url: str, host: HostFacts, image_dir: str) -> None:
        config = config.with_runtime_table("runc", images={IMAGE: image_dir})
        config = config.model_copy(update={"node": config.node.model_copy(update={"runtime": "runc"})})
        super().__init__(config, url, host)
        self.shim = self.node.runtime.shim  # type: ignore[attr-defined]
        self.shim.ensure()

    def worker_pids(self) -> set[int]:
        return {w.pid for w in self.node.ps() if w.pid}

    def monitor_pids(self) -> list[int]:
        pid = self.shim.pid()
        return [pid] if pid else []

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self.shim.stop(force=True)


class StormLauncher(Launcher):
    name = "storm_style"

    def __init__(self, config: NodeConfig, url: str, host: HostFacts) -> None:
        super().__init__(config, url, host)
        self._docker = ["docker", "-H", url]
        self._cids: dict[str, str] = {}
        self._waiters: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def launch(self, spec: WorkerSpec, on_exit: ExitFn) -> None:
        plan = self._plan_and_dirs(spec)
        argv = docker_run_argv(plan, berth_values(plan))
        run = subprocess.run([*self._docker, *argv], capture_output=True, text=True)
        if run.returncode != 0:
            raise BenchError(f"docker run {spec.worker_id}: exit {run.returncode}: {run.stderr.strip()}")
        # Storm: Utils.asyncLoop(... runDockerCommandWaitFor("docker wait <workerId>", processExitCallback))
        threading.Thread(target=self._wait, args=(spec.worker_id, on_exit), name=f"DockerWait_{spec.port}",
                         daemon=True).start()

    def _wait(self, worker_id: str, on_exit: ExitFn) -> None:
        p = subprocess.Popen([*self._docker, "wait", worker_id], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with self._lock:
            self._waiters[worker_id] = p
        rc = p.wait()
        with self._lock:
            self._waiters.pop(worker_id, None)
        on_exit(worker_id, rc)  # Storm's defect kept: the exit code of `docker wait`, not the worker's

    def _cid(self, worker_id: str) -> str:
        cid = self._cids.get(worker_id)
        if cid is None:  # Storm's getContainerId: the cid file, read once and cached
            cid = (self.worker_root(worker_id) / "container.cid").read_text().splitlines()[0]
            self._cids[worker_id] = cid
        return cid

    def memory_read(self, worker_id: str) -> int:
        # Storm's getMemoryUsage: <cgroup root>/memory/<cgroup parent>/<cid>/memory.usage_in_bytes
        path = (f"{self.config.container.cgroup_root}/memory{self.config.container.cgroup_parent}/"
                f"{self._cid(worker_id)}/memory.usage_in_bytes")
        with open(path, encoding="ascii") as fh:
            return int(fh.read())

    def remove(self, worker_id: str) -> None:
        # Storm's forceKill: docker rm --force <workerId>
        subprocess.run([*self._docker, "rm", "--force", worker_id], capture_output=True)
        self._cids.pop(worker_id, None)
        self._remove_dirs(worker_id)

    def close(self) -> None:
        with self._lock:
            waiters = list(self._waiters.values())
        for p in waiters:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


class SdkLauncher(Launcher):
    name = "sdk"

    def __init__(self, config: NodeConfig, url: str, host: HostFacts) -> None:
        super().__init__(config, url, host)
        import docker

        self.api = docker.APIClient(base_url=url, version="auto", timeout=60, max_pool_size=128)
        self._cids: dict[str, str] = {}

    def launch(self, spec: WorkerSpec, on_exit: ExitFn) -> None:
        plan = self._plan_and_dirs(spec)
        body = engine_create_body(plan)
        cid = str(self.api.create_container_from_config(body, name=spec.worker_id)["Id"])  # type: ignore[no-untyped-call]
        self._cids[spec.worker_id] = cid
        self.api.start(cid)
        threading.Thread(target=self._wait, args=(spec.worker_id, cid, on_exit), name=f"wait-{spec.worker_id}",
                         daemon=True).start()

    def _wait(self, worker_id: str, cid: str, on_exit: ExitFn) -> None:
        try:
            res = self.api.wait(cid, timeout=None)
            code = int(res.get("StatusCode", -1))
        except Exception:  # removed while waited for: report it as unknown
            code = -1
        on_exit(worker_id, code)

    def memory_read(self, worker_id: str) -> int:
        stats = self.api.stats(self._cids[worker_id], stream=False)
        return int(stats["memory_stats"].get("usage", 0))

    def remove(self, worker_id: str) -> None:
        import docker

        cid = self._cids.pop(worker_id, worker_id)
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(cid, force=True)
        self._remove_dirs(worker_id)

    def close(self) -> None:
        self.api.close()


_PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


class RuncLauncher(Launcher):
    name = "runc"

    def __init__(self, config: NodeConfig, url: str, host: HostFacts, rootfs: str, bundles: Path,
                 seccomp: bool = True) -> None:
        super().__init__(config, url, host)
        self.rootfs = rootfs
        self.seccomp: dict[str, Any] | None = None
        if seccomp:  # the very filter berth's runc runtime gives its workers (converted once, as berth does)
            from berth._runtimes.seccomp import Filters

            self.seccomp = Filters.of(config).oci(None)
        if not seccomp:
            self.name = "runc_noseccomp"
        self.bundles = bundles
        self.bundles.mkdir(parents=True, exist_ok=True)
        self._runc = ["runc", "--root", RUNC_ROOT]
        set_child_subreaper(True)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._lock = threading.Lock()
        self._by_fd: dict[int, tuple[str, int, ExitFn]] = {}
        self._pids: dict[str, int] = {}
        self._closing = False
        self._watcher = threading.Thread(target=self._watch, name="runc-pidfd-watcher", daemon=True)
        self._watcher.start()

    def launch(self, spec: WorkerSpec, on_exit: ExitFn) -> None:
        from berth._linux.mountinfo import read_mountinfo
        from berth._runtimes.runc.oci import oci_config

        plan = self._plan_and_dirs(spec)
        bundle = self.bundles / spec.worker_id
        bundle.mkdir()
        config = oci_config(plan, self.rootfs, seccomp=self.seccomp, table=read_mountinfo())
        (bundle / "config.json").write_text(json.dumps(config))
        pid_file = bundle / "init.pid"
        log = bundle / "runc.log"
        rc = subprocess.run([*self._runc, "--log", str(log), "run", "-d", "--bundle", str(bundle),
                             "--pid-file", str(pid_file), spec.worker_id],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        if rc != 0:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BenchError(f"runc run {spec.worker_id}: exit {rc}: {text.strip()}")
        pid = int(pid_file.read_text())
        fd = os.pidfd_open(pid)
        with self._lock:
            self._pids[spec.worker_id] = pid
            self._by_fd[fd] = (spec.worker_id, pid, on_exit)
        self._epoll.register(fd, select.EPOLLIN)

    def _watch(self) -> None:
        while True:
            for fd, _ev in self._epoll.poll():
                if fd == self._wake_r:
                    if self._closing:
                        return
                    continue
                with self._lock:
                    item = self._by_fd.pop(fd, None)
                if item is None:
                    continue
                worker_id, _pid, on_exit = item
                self._epoll.unregister(fd)
                try:
                    res = os.waitid(os.P_PIDFD, fd, os.WEXITED)
                    code = -1
                    if res is not None:
                        code = res.si_status if res.si_code == os.CLD_EXITED else 128 + res.si_status
                except ChildProcessError:
                    code = -1  # not our child after all (should not happen with the subreaper)
                finally:
                    os.close(fd)
                on_exit(worker_id, code)

    def worker_pids(self) -> set[int]:
        with self._lock:
            return set(self._pids.values())

    def memory_read(self, worker_id: str) -> int:
        # The OCI config puts the worker in <cgroup parent>/<worker id>: read the file directly.
        path = (f"{self.config.container.cgroup_root}/memory{self.config.container.cgroup_parent}/"
                f"{worker_id}/memory.usage_in_bytes")
        with open(path, encoding="ascii") as fh:
            return int(fh.read())

    def remove(self, worker_id: str) -> None:
        subprocess.run([*self._runc, "delete", "--force", worker_id], capture_output=True)
        with self._lock:
            self._pids.pop(worker_id, None)
        shutil.rmtree(self.bundles / worker_id, ignore_errors=True)
        self._remove_dirs(worker_id)

    def close(self) -> None:
        self._closing = True
        os.write(self._wake_w, b"x")
        self._watcher.join(timeout=5)
        with self._lock:
            fds = list(self._by_fd)
            self._by_fd.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
            os.close(fd)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def make_launcher(name: str, run_dir: Path, run: str, url: str, host: HostFacts, rootfs: str,
                  image_dir: str = "") -> Launcher:
    """One launcher, with its own berth node name so no launcher sees another's containers."""
    from ._common import NODE_PREFIX, TAGS

    config = make_config(run_dir, f"{NODE_PREFIX}{run}-{TAGS[name]}", url)
    classes: dict[str, Any] = {"berth": BerthLauncher, "storm_style": StormLauncher, "sdk": SdkLauncher}
    if name in ("runc", "runc_noseccomp"):
        return RuncLauncher(config, url, host, rootfs, run_dir / "runc-bundles", seccomp=name == "runc")
    if name == "berth_runc":
        return BerthRuncLauncher(config, url, host, image_dir)
    if name not in classes:
        raise BenchError(f"unknown launcher {name!r}")
    launcher: Launcher = classes[name](config, url, host)
    return launcher
