"""Read a process's own cgroup files, on cgroup v1 and v2.

Memory usage comes from here rather than the engine's stats call: a file read costs
microseconds, the stats call about a second. The cgroup is found from the process itself
(``/proc/<pid>/cgroup`` joined with the mount table), so no driver naming scheme is assumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from .._paths import is_under
from .mountinfo import read_mountinfo


@dataclass(frozen=True)
class CgroupMount:
    mount_point: str
    root: str
    version: int
    controllers: frozenset[str]


@dataclass(frozen=True)
class ProcCgroup:
    """One line of ``/proc/<pid>/cgroup``: hierarchy id (0 = the v2 one), controllers, path."""

    hierarchy: int
    controllers: frozenset[str]
    path: str


@lru_cache(maxsize=1)
def _mounts() -> tuple[CgroupMount, ...]:
    out = []
    for m in read_mountinfo():
        if m.fstype == "cgroup2":
            out.append(CgroupMount(m.mount_point, m.root, 2, frozenset()))
        elif m.fstype == "cgroup":
            out.append(CgroupMount(m.mount_point, m.root, 1, frozenset(m.super_options)))
    return tuple(out)


def proc_cgroups(pid: int | str, proc: str = "/proc") -> list[ProcCgroup]:
    """The cgroups ``pid`` belongs to, one per hierarchy, as the kernel lists them."""
    out = []
    with open(os.path.join(proc, str(pid), "cgroup"), encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3 and parts[0].isdigit():
                out.append(ProcCgroup(int(parts[0]), frozenset(filter(None, parts[1].split(","))), parts[2]))
    return out


def cgroup_path(pid: int | str, controller: str = "memory", proc: str = "/proc") -> str:
    """``pid``'s cgroup path (relative to the hierarchy's root) for ``controller`` on v1, else its
    v2 path: what a cgroup parent is checked against."""
    lines = proc_cgroups(pid, proc)
    for c in lines:
        if c.hierarchy != 0 and controller in c.controllers:
            return c.path
    for c in lines:
        if c.hierarchy == 0:
            return c.path
    raise ValueError(f"no cgroup listed for pid {pid}")


def _join(mount: CgroupMount, path: str) -> str:
    rel = path
    if mount.root != "/" and is_under(path, mount.root):
        rel = path[len(mount.root):]
    return os.path.join(mount.mount_point, rel.lstrip("/"))


def cgroup_dir(pid: int, controller: str = "memory") -> tuple[str, int]:
    """The directory of ``pid``'s cgroup for ``controller`` and the cgroup version it is on."""
    lines = proc_cgroups(pid)
    for c in lines:
        if c.hierarchy != 0 and controller in c.controllers:
            for m in _mounts():
                if m.version == 1 and controller in m.controllers:
                    return _join(m, c.path), 1
    for c in lines:
        if c.hierarchy == 0:
            for m in _mounts():
                if m.version == 2:
                    d = _join(m, c.path)
                    if os.path.exists(os.path.join(d, "memory.current")) or controller != "memory":
                        return d, 2
    raise FileNotFoundError(f"no {controller} cgroup found for pid {pid}")


def memory_file(pid: int) -> str:
    """The file holding the memory usage of ``pid``'s cgroup (v1 or v2)."""
    d, version = cgroup_dir(pid, "memory")
    return os.path.join(d, "memory.usage_in_bytes" if version == 1 else "memory.current")


def read_int(path: str) -> int:
    with open(path, encoding="ascii") as fh:
        return int(fh.read())


def memory_usage(pid: int) -> int:
    return read_int(memory_file(pid))


def oom_kills(pid: int) -> int | None:
    """The cgroup's count of OOM kills, or None where the kernel does not keep one."""
    d, version = cgroup_dir(pid, "memory")
    return oom_kills_in(d, version)


def oom_kills_in(directory: str, version: int) -> int | None:
    """The ``oom_kill`` count of a memory cgroup directory (v1 ``memory.oom_control``, v2
    ``memory.events``), or None where the kernel does not keep one."""
    name = "memory.oom_control" if version == 1 else "memory.events"
    try:
        with open(os.path.join(directory, name), encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except OSError:
        return None
    return None


def memory_dir_for(path: str, mounts: tuple[CgroupMount, ...] | None = None) -> tuple[str, int] | None:
    """Where the memory cgroup named by an absolute cgroup path (an OCI ``cgroupsPath``) is, and
    its version: the v1 memory hierarchy where there is one, else the v2 one."""
    mounts = _mounts() if mounts is None else mounts
    for version in (1, 2):
        for m in mounts:
            if m.version == version and (version == 2 or "memory" in m.controllers):
                if version == 2 and not os.path.exists(os.path.join(m.mount_point, "cgroup.controllers")):
                    continue
                if version == 2 and "memory" not in _read_words(os.path.join(m.mount_point, "cgroup.controllers")):
                    continue
                return _join(m, path), version
    return None


def _read_words(path: str) -> set[str]:
    try:
        with open(path, encoding="ascii") as fh:
            return set(fh.read().split())
    except OSError:
        return set()
