"""The values on Storm's ``docker run`` line for one worker, spelled as Storm's code spells them.

Storm builds its paths by string joins (``ConfigUtils``) and never normalises most of them, so a
``storm.local.dir`` of ``/var/storm/`` gives ``-v /var/storm//workers/<id>:…``; only the worker
dir handed to ``launchWorkerProcess`` is a ``java.io.File`` (no doubled or trailing ``/``), which
is where ``--workdir`` and the script path come from. berth launches with normalised paths; this
module only says what Storm's line would be, for ``explain --storm``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from .config import NodeConfig
from .layout import SCRIPT_NAME, Layout

StormMount = tuple[str, str, bool]
"""(source, target, read-only)"""


@dataclass(frozen=True)
class StormLine:
    mounts: tuple[StormMount, ...]
    cores: tuple[int, ...]
    mems: str | None
    cgroup_parent: str
    workdir: str
    cid_file: str
    seccomp: str | None
    cpu_percent: int
    memory_mb: int | None
    """None when Storm's line carries no ``--memory`` (storm.cgroup.memory.enforcement.enable false)."""
    argv: tuple[str, ...]
    network: str


def java_file_path(path: str) -> str:
    """``new File(path).getPath()`` on Unix: doubled ``/`` collapsed, a trailing ``/`` dropped;
    ``.`` and ``..`` are kept (java.io.UnixFileSystem.normalize)."""
    path = re.sub(r"/{2,}", "/", path)
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def java_double(value: float) -> str:
    """``Double.toString``: plain decimal in [1e-3, 1e7) (where it agrees with Python's shortest
    repr), else Java's ``d.dddE<exp>``."""
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(float(value))
    sign, digits, exp = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    mantissa = text[0] + "." + (text[1:] or "0")
    return ("-" if sign else "") + f"{mantissa}E{exp + len(text) - 1}"


def storm_line(config: NodeConfig, worker_id: str, topology_id: str, port: int, lay: Layout,
               berth_mounts: tuple[StormMount, ...], cores: tuple[int, ...], mems: str | None,
               cpu_percent: int, memory_mb: int) -> StormLine:
    """Storm's line: from the storm.yaml's spellings when there is one, else berth's own values."""
    c, s = config.container, config.storm
    if s is None:
        return StormLine(mounts=berth_mounts, cores=cores, mems=mems, cgroup_parent=c.cgroup_parent,
                         workdir=lay.worker_root, cid_file=lay.cid_file, seccomp=c.seccomp_profile or None,
                         cpu_percent=cpu_percent, memory_mb=memory_mb, argv=(c.shell, lay.script),
                         network=c.network)
    # DockerManager.launchWorkerProcess, with ConfigUtils' joins
    local = s.local_dir or config.node.local_dir
    root = f"{local}/workers/{worker_id}"
    supervisor = f"{local}/supervisor"
    artifacts = f"{s.artifacts_root or config.artifacts_root}/{topology_id}/{port}"
    user_file = f"{local}/workers-users/{worker_id}"
    # supervisorStormDistRoot url-encodes the topology id; berth's ids are all characters it keeps
    shared = f"{supervisor}/stormdist/{topology_id}/shared_by_topology"
    cgroup_root = s.cgroup_root or c.cgroup_root
    home = config.node.install_dir or ""
    nscd = s.nscd_dir if s.nscd_dir is not None else c.nscd_dir
    mounts: list[StormMount] = [(cgroup_root, cgroup_root, True), (home, home, True),
                                (supervisor, supervisor, True), (root, root, False), (artifacts, artifacts, False),
                                (user_file, user_file, False)]
    if nscd:
        mounts.append((nscd, nscd, False))
    mounts += [(shared, shared, False), (f"{root}/tmp", "/tmp", False)]
    ro = s.readonly_mounts if s.readonly_mounts is not None else c.readonly_mounts
    rw = s.readwrite_mounts if s.readwrite_mounts is not None else c.readwrite_mounts
    mounts += [(p, p, True) for p in ro] + [(p, p, False) for p in rw]
    workdir = java_file_path(root)  # targetDir.getAbsolutePath()
    seccomp = s.seccomp_profile or c.seccomp_profile or None
    zone = s.zone_for(port)  # Storm pins only by the port's NUMA zone (reserveResourcesForWorker)
    return StormLine(mounts=tuple(mounts), cores=zone.cores if zone else (), mems=zone.id if zone else None,
                     cgroup_parent=s.cgroup_parent or c.cgroup_parent, workdir=workdir,
                     cid_file=f"{root}/container.cid", seccomp=seccomp, cpu_percent=cpu_percent,
                     memory_mb=memory_mb if s.memory_enforcement else None,
                     argv=("bash", f"{workdir}/{SCRIPT_NAME}"), network=c.network)
