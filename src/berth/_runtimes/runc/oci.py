"""The plan as an OCI runtime ``config.json`` (what runc runs), rooted at a worker's own root.

A pure translation, like the other renderers: the same user and groups, Storm's mounts in
Storm's order, the same limits and hardening as the Engine API body, plus what the engine would
otherwise add on its own (a seccomp filter, masked /proc paths, read-only submounts). The
host's mount table and the converted seccomp profile are arguments, so this stays testable
without a host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..._core.labels import LABEL_IMAGE
from ..._core.plan import Plan
from ..._linux.mountinfo import MountEntry, submounts
from ..._paths import is_under

MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def _bind(source: str, target: str, read_only: bool, recursive: bool = True) -> dict[str, Any]:
    return {"destination": target, "type": "bind", "source": source,
            "options": ["rbind" if recursive else "bind", "rprivate", "nosuid", "nodev",
                        "ro" if read_only else "rw"]}


def _depth(destination: str) -> int:
    return os.path.normpath(destination).count("/")


def oci_mounts(plan: Plan, table: Sequence[MountEntry] | None = None) -> list[dict[str, Any]]:
    """The container's filesystems, then the plan's binds in the plan's (Storm's) order, all
    sorted parent-first (by the depth of the destination, stably), as the engine sorts them.

    runc mounts in the order it is given, so a mount over a parent after a deeper one hides it:
    with ``local_dir`` under ``/tmp``, the worker's own ``/tmp`` (Storm's ninth mount) hid its
    worker dir (the fourth), and no worker could open its script.

    runc makes a read-only recursive bind read-only at its top only, like the engine, so with
    ``table`` (the host's mount table) a read-only bind that has submounts becomes a plain bind
    plus one read-only bind per submount: on a cgroup v1 host the worker would otherwise get
    every controller hierarchy writable.
    """
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    targets = [m.target for m in plan.mounts]
    for m in plan.mounts:
        subs = submounts(m.source, list(table)) if (table is not None and m.read_only) else []
        if not subs:
            mounts.append(_bind(m.source, m.target, m.read_only))
            continue
        mounts.append(_bind(m.source, m.target, True, recursive=False))
        for sub in subs:
            target = os.path.join(m.target, os.path.relpath(sub, m.source))
            if any(t != m.target and is_under(t, m.target) and is_under(target, t) for t in targets):
                continue  # under another planned mount: that mount decides
            mounts.append(_bind(sub, target, True, recursive=False))
    return sorted(mounts, key=lambda m: _depth(m["destination"]))


def oci_config(plan: Plan, rootfs: str, *, seccomp: Mapping[str, Any] | None = None,
               table: Sequence[MountEntry] | None = None) -> dict[str, Any]:
    """The plan as an OCI runtime ``config.json`` for runc, rooted at ``rootfs``.

    ``seccomp`` is the OCI ``linux.seccomp`` object (``_core.seccomp.oci_seccomp``); the runc
    runtime always passes one. No init process is added: the worker is PID 1 of its
    namespace, so a signal reaches it as that signal and its wait status says which.
    """
    r, s, ident = plan.resources, plan.security, plan.identity
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if s.network != "host":
        namespaces.append({"type": "network"})
    cpu: dict[str, Any] = {"quota": r.cpu_percent * 1000, "period": 100_000}
    if r.cores:
        cpu["cpus"] = r.cpuset_cpus
    if r.numa_node is not None:
        cpu["mems"] = r.cpuset_mems
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": f"{s.cgroup_parent}/{plan.worker_id}",
        "resources": {
            "devices": [{"allow": False, "access": "rwm"}],
            "memory": {"limit": r.memory_bytes, "swap": r.memory_bytes},
            "cpu": cpu,
            "pids": {"limit": r.pids_limit},
        },
        "maskedPaths": list(MASKED),
        "readonlyPaths": list(READONLY),
    }
    if seccomp is not None:
        linux["seccomp"] = dict(seccomp)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": ident.uid, "gid": ident.gid, "additionalGids": list(ident.groups)},
            "args": list(plan.argv),
            "env": [PATH_ENV, f"HOSTNAME={plan.worker_id}"],
            "cwd": plan.workdir,
            "capabilities": {k: [] for k in _CAP_SETS},  # berth drops them all (Security.cap_drop)
            "noNewPrivileges": s.no_new_privileges,
        },
        "root": {"path": rootfs, "readonly": s.read_only_root},
        "hostname": plan.worker_id,
        "annotations": {**plan.label_map, LABEL_IMAGE: plan.image},
        "mounts": oci_mounts(plan, table),
        "linux": linux,
    }
