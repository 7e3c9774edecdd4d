"""The bench's surroundings: its engine, its image, the worker users, a root filesystem for runc,
the machine's description, and the cleanup pass that removes everything a run made.

``--engine private`` (the default) starts berth's own ``scripts/engine`` with its state in
/var/lib/berth-bench and its socket in /run/berth-b, so no one else's containers share the
engine while it is measured; it is stopped at the end if the bench started it. ``shared`` uses
the team's engine at /run/berth-dev (started if absent, never stopped). Any other value is an
engine URL used as it is.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import (
    BENCH_ROOT,
    CGROUP_PARENT,
    DEFAULT_ROOTFS,
    IMAGE,
    NAME_PREFIX,
    NODE_PREFIX,
    PRIVATE_RUN,
    PRIVATE_URL,
    REPO,
    RUNC_ROOT,
    RUNS,
    SCRIPTS,
    SHARED_URL,
    BenchError,
)


@dataclass
class Engine:
    kind: str
    url: str
    env: dict[str, str]
    started: bool = False
    pidfiles: list[str] = field(default_factory=list)

    def stop_if_ours(self) -> None:
        if self.kind == "private" and self.started:
            subprocess.run([str(SCRIPTS / "engine"), "stop"], env=self.env, capture_output=True)
            self.started = False


def _engine_env(kind: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BERTH_DEV_ROOT", "BERTH_DEV_RUN", "BERTH_DEV_EXEC_ROOT")}
    if kind == "private":
        env["BERTH_DEV_ROOT"] = str(BENCH_ROOT)
        env["BERTH_DEV_RUN"] = PRIVATE_RUN
    return env


def open_engine(spec: str, say: Any = print) -> Engine:
    """Find or start the engine named by ``--engine``; make sure the image is in it."""
    if spec in ("private", "shared"):
        env = _engine_env(spec)
        url = PRIVATE_URL if spec == "private" else SHARED_URL
        run = PRIVATE_RUN if spec == "private" else "/run/berth-dev"
        eng = Engine(spec, url, env, pidfiles=[f"{run}/dockerd.pid", f"{run}/containerd.pid"])
        status = subprocess.run([str(SCRIPTS / "engine"), "status"], env=env, capture_output=True, text=True)
        if status.returncode != 0:
            say(f"starting the {spec} engine (scripts/engine start, socket {url})")
            started = subprocess.run([str(SCRIPTS / "engine"), "start"], env=env, capture_output=True, text=True)
            if started.returncode != 0:
                raise BenchError(f"scripts/engine start failed:\n{started.stdout[-2000:]}{started.stderr[-2000:]}")
            eng.started = True
    else:
        if "://" not in spec:
            raise BenchError(f"--engine must be private, shared or an engine URL, got {spec!r}")
        eng = Engine("url", spec, dict(os.environ))
    try:
        ensure_image(eng, say)
    except BaseException:
        eng.stop_if_ours()
        raise
    return eng


def ensure_image(eng: Engine, say: Any = print) -> None:
    import docker

    api = docker.APIClient(base_url=eng.url, version="auto")
    try:
        api.inspect_image(IMAGE)  # type: ignore[no-untyped-call]
        return
    except docker.errors.NotFound:
        pass
    finally:
        api.close()
    say(f"importing {IMAGE} into {eng.url} (scripts/build-images --only python, from the cached rootfs)")
    # The root filesystem cache stays the team's (default BERTH_DEV_ROOT); only the target engine changes.
    env = {**_engine_env("shared"), "DOCKER_HOST": eng.url}
    built = subprocess.run([str(SCRIPTS / "build-images"), "--only", "python"], env=env, capture_output=True,
                           text=True)
    if built.returncode != 0:
        raise BenchError(f"scripts/build-images failed:\n{built.stdout[-2000:]}{built.stderr[-2000:]}")


def ensure_users() -> None:
    done = subprocess.run([str(SCRIPTS / "users")], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"scripts/users failed: {done.stderr.strip()}")


def ensure_rootfs(rootfs: str, say: Any = print) -> None:
    if os.path.exists(os.path.join(rootfs, "usr/bin/python3")):
        return
    if rootfs != DEFAULT_ROOTFS:
        raise BenchError(f"{rootfs} is not an unpacked python root filesystem")
    say("building the python root filesystem for runc (scripts/build-images --only python --no-import)")
    built = subprocess.run([str(SCRIPTS / "build-images"), "--only", "python", "--no-import"],
                           env=_engine_env("shared"), capture_output=True, text=True)
    if built.returncode != 0:
        raise BenchError(f"scripts/build-images --no-import failed:\n{built.stdout[-2000:]}{built.stderr[-2000:]}")


def mount_runc_rootfs(run_dir: Path, rootfs: str) -> str:
    """An overlay over the cached root filesystem: runc makes mount points inside the rootfs, and
    they must land in this run's upper layer, not in the team's cache. Made once, not timed."""
    base = run_dir / "runc-rootfs"
    upper, work, merged = base / "upper", base / "work", base / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                           f"lowerdir={rootfs},upperdir={upper},workdir={work}", str(merged)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"cannot mount the overlay for runc's rootfs: {done.stderr.strip()}")
    return str(merged)


def new_run_dir(run: str) -> Path:
    path = RUNS / run
    path.mkdir(parents=True, mode=0o755)
    for p in (BENCH_ROOT, RUNS, path):
        os.chmod(p, 0o755)  # the workers (uid 2101) traverse it to reach their mounts
    return path


# ------------------------------------------------------------------------------- cleanup


def _is_ours(c: dict[str, Any], run: str | None) -> bool:
    name_prefix = f"/{NAME_PREFIX}{run}-" if run else f"/{NAME_PREFIX}"
    node_prefix = f"{NODE_PREFIX}{run}-" if run else NODE_PREFIX
    names = c.get("Names") or []
    node = (c.get("Labels") or {}).get("berth.node", "")
    return any(n.startswith(name_prefix) for n in names) or node.startswith(node_prefix)


def _sweep_berth_runc(run_dir: Path) -> int:
    """berth_runc's nodes of a run: their runc containers, their shims, their workers' roots."""
    removed = 0
    for runc_dir in run_dir.glob("state/*/runc"):
        root = runc_dir / "root"
        if root.is_dir() and shutil.which("runc"):
            listed = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
            for cid in listed.stdout.split():
                subprocess.run(["runc", "--root", str(root), "delete", "--force", cid], capture_output=True)
                removed += 1
        if (runc_dir / "shim.sock").exists():
            from berth._runtimes.runc.shimclient import ShimClient

            with contextlib.suppress(Exception):
                ShimClient(str(runc_dir), "runc", str(root)).stop(force=True)
        for rootfs in runc_dir.glob("workers/*/bundle/rootfs"):
            subprocess.run(["umount", "-l", str(rootfs)], capture_output=True)
    return removed


def sweep(url: str | None, run: str | None = None, say: Any = print) -> int:
    """Remove every container, runc container, mount and directory of ``run`` (or of every run)."""
    removed = 0
    if url is not None:
        import docker

        with contextlib.suppress(Exception):
            api = docker.APIClient(base_url=url, version="auto", timeout=60)
            for c in api.containers(all=True):
                if _is_ours(c, run):
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        api.remove_container(c["Id"], force=True)
                        removed += 1
            api.close()
    if shutil.which("runc") and os.path.isdir(RUNC_ROOT):
        prefix = f"{NAME_PREFIX}{run}-" if run else NAME_PREFIX
        listed = subprocess.run(["runc", "--root", RUNC_ROOT, "list", "-q"], capture_output=True, text=True)
        for cid in listed.stdout.split():
            if cid.startswith(prefix):
                subprocess.run(["runc", "--root", RUNC_ROOT, "delete", "--force", cid], capture_output=True)
                removed += 1
    runs = [RUNS / run] if run else (sorted(RUNS.iterdir()) if RUNS.is_dir() else [])
    for rd in runs:
        removed += _sweep_berth_runc(rd)
        merged = rd / "runc-rootfs" / "merged"
        if os.path.ismount(merged):
            subprocess.run(["umount", str(merged)], capture_output=True)
            if os.path.ismount(merged):
                subprocess.run(["umount", "-l", str(merged)], capture_output=True)
        if rd.exists() and not os.path.ismount(merged):
            shutil.rmtree(rd, ignore_errors=True)
    # empty per-worker cgroups runc or docker may leave under the bench's parent
    for ctl in Path("/sys/fs/cgroup").iterdir():
        parent = ctl / CGROUP_PARENT.strip("/")
        if parent.is_dir():
            for d in parent.iterdir():
                if d.is_dir() and (run is None or d.name.startswith(f"{NAME_PREFIX}{run}-")):
                    with contextlib.suppress(OSError):
                        d.rmdir()
    return removed


# ------------------------------------------------------------------------------- the machine


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def machine(url: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True).stdout.strip()
    cgroup = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "cgroup": cgroup,
        "docker_client": _first_line(["docker", "version", "--format", "{{.Client.Version}}"]),
        "docker_server": _first_line(["docker", "-H", url, "version", "--format", "{{.Server.Version}}"]),
        "runc": _first_line(["runc", "--version"]),
        "containerd": _first_line(["containerd", "--version"]),
        "python": platform.python_version(),
        "berth": commit + (" + uncommitted changes in src/" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
