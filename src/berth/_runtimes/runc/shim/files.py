"""Small helpers of the shim: times, atomic JSON files, /proc and cgroup reads. Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from .durable import replace_file


def now_iso(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def log(msg: str) -> None:
    """One line to the shim's log (its stderr). Never fatal: on a full disk the line is lost, the
    shim goes on (it used to die here, and then every `rm`, `kill` and `shim start` failed)."""
    with contextlib.suppress(OSError):
        os.write(2, f"{now_iso()} berth-shim[{os.getpid()}] {msg}\n".encode(errors="replace"))


def write_json(path: str, data: Mapping[str, Any], mode: int = 0o644, *, durable: bool = True) -> None:
    """Atomically, and with ``durable`` flushed to the disk (``durable.replace_file``: which files
    need it). (The runc runtime writes its bundles with this too.)"""
    # dumps uses the C encoder; dump would encode in Python (ms for a config)
    replace_file(path, json.dumps(data).encode(), mode, durable=durable)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat): with the
    pid, it names one process for good, since pids are reused and start times are not."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def handles(pid: int, sig: int) -> bool:
    """Whether ``pid`` catches or ignores ``sig`` (``SigCgt``, ``SigIgn`` of /proc/<pid>/status);
    True when that cannot be read."""
    masks: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("SigCgt", "SigIgn"):
                    masks[key] = int(value.strip(), 16)
    except (OSError, ValueError):
        return True
    return len(masks) < 2 or bool((masks["SigCgt"] | masks["SigIgn"]) & (1 << (sig - 1)))


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def cgroup_numbers(memcg: str | None, version: int) -> tuple[int | None, int | None]:
    """(OOM kills, peak memory bytes) of a memory cgroup; None for what the kernel does not keep."""
    if not memcg:
        return None, None
    oom: int | None = None
    try:
        with open(os.path.join(memcg, "memory.oom_control" if version == 1 else "memory.events"),
                  encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    oom = int(value)
    except (OSError, ValueError):
        pass
    peak: int | None = None
    try:
        with open(os.path.join(memcg, "memory.max_usage_in_bytes" if version == 1 else "memory.peak"),
                  encoding="ascii") as fh:
            peak = int(fh.read())
    except (OSError, ValueError):
        pass
    return oom, peak


def decode_status(status: int) -> dict[str, Any]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"exit_code": 128 + sig, "signal": sig, "core_dumped": os.WCOREDUMP(status)}
    return {"exit_code": os.waitstatus_to_exitcode(status), "signal": None, "core_dumped": False}


def move_to_own_cgroup(name: str = "berth-shim") -> None:
    """Leave the starter's cgroups (a service manager stopping berth kills berth's cgroup) for
    ``/<name>`` in every hierarchy but cpuset (whose new groups start with no cpus)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return
    for line in lines:
        left, _, right = line.partition(" - ")
        fstype, _, opts = [*right.split(" "), "", "", ""][:3]
        if fstype not in ("cgroup", "cgroup2") or "cpuset" in opts.split(","):
            continue
        target = os.path.join(left.split(" ")[4].replace("\\040", " "), name)
        try:
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, "cgroup.procs"), "w", encoding="ascii") as fh:
                fh.write(str(os.getpid()))
        except OSError as exc:
            log(f"cannot move into {target}: {exc.strerror}")


def tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - limit))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return "(no runc log)"


def carried(req: dict[str, Any]) -> dict[str, Any]:
    """What a run request says that outlives the launch (kept in ``started.json``)."""
    keys = ("id", "worker", "memcg", "cgroup_version", "log", "log_max_bytes", "log_files")
    return {k: req[k] for k in keys if k in req}


def self_usage() -> tuple[int, int]:
    """(RSS bytes, threads) of this process."""
    rss = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, len(os.listdir("/proc/self/task"))


def started_after_a_lost_launch(wdir: str) -> dict[str, Any] | None:
    """runc finished a launch after the shim that asked for it died: runc's pid file is there,
    ``started.json`` is not. The request is in ``launch.json``; ``started.json`` is written from it."""
    req = read_json(os.path.join(wdir, "launch.json"))
    try:
        with open(os.path.join(wdir, "init.pid"), encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    if req is None:
        return None
    started = {**carried(req), "pid": pid, "start_time": start_time(pid), "started_at": now_iso()}
    write_json(os.path.join(wdir, "started.json"), started, durable=False)
    return started
