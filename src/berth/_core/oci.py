"""The plan as an OCI runtime ``config.json`` (what runc runs), rooted at an image's root filesystem.

A pure translation, like the other renderers: same user, groups, mounts, limits and hardening
as the Engine API body.
"""

from __future__ import annotations

from typing import Any

from .plan import Plan

_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
           "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def oci_config(plan: Plan, rootfs: str) -> dict[str, Any]:
    """The plan as an OCI runtime ``config.json`` for runc, rooted at an unpacked image.

    Same user, groups, mounts, limits and hardening as the Engine API body. Not rendered: a
    seccomp filter (the Docker profile format is not the OCI one); the runc path is for
    measurement and parity, the docker runtime is the hardened one.
    """
    r, s, ident = plan.resources, plan.security, plan.identity
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if s.network != "host":
        namespaces.append({"type": "network"})
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
    mounts += [{"destination": m.target, "type": "bind", "source": m.source,
                "options": ["rbind", "rprivate", "nosuid", "nodev", "ro" if m.read_only else "rw"]}
               for m in plan.mounts]
    cpu: dict[str, Any] = {"quota": r.cpu_percent * 1000, "period": 100_000}
    if r.cores:
        cpu["cpus"] = r.cpuset_cpus
    if r.numa_node is not None:
        cpu["mems"] = r.cpuset_mems
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": ident.uid, "gid": ident.gid, "additionalGids": list(ident.groups)},
            "args": list(plan.argv),
            "env": [_PATH],
            "cwd": plan.workdir,
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "noNewPrivileges": s.no_new_privileges,
        },
        "root": {"path": rootfs, "readonly": s.read_only_root},
        "hostname": plan.worker_id,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": f"{s.cgroup_parent}/{plan.worker_id}",
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": r.memory_bytes, "swap": r.memory_bytes},
                "cpu": cpu,
                "pids": {"limit": r.pids_limit},
            },
            "maskedPaths": _MASKED,
            "readonlyPaths": _READONLY,
        },
    }
