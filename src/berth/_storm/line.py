"""The values on Storm's ``docker run`` line for one worker, spelled as Storm's code spells them.

Storm builds its paths by string joins (``ConfigUtils``) and never normalises most of them, so a
``storm.local.dir`` of ``/var/storm/`` gives ``-v /var/storm//workers/<id>:…``; only the worker
dir handed to ``launchWorkerProcess`` is a ``java.io.File`` (no doubled or trailing ``/``), which
is where ``--workdir`` and the script path come from. berth launches with normalised paths; this
module only says what Storm's line would be, for ``explain --storm``.
"""

from __future__ import annotations

import re

from .._core.config import NodeConfig
from .._core.layout import SCRIPT_NAME
from .._core.plan import Plan
from .._runtimes.docker.render import LineMount, LineValues, berth_values


def java_file_path(path: str) -> str:
    """``new File(path).getPath()`` on Unix: doubled ``/`` collapsed, a trailing ``/`` dropped;
    ``.`` and ``..`` are kept (java.io.UnixFileSystem.normalize)."""
    path = re.sub(r"/{2,}", "/", path)
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def storm_line(config: NodeConfig, plan: Plan) -> LineValues:
    """Storm's line for the worker ``plan`` runs: from the storm.yaml's spellings when there is one,
    else berth's own values (for a berth.toml, Storm's flags are berth's)."""
    c, s = config.container, config.storm
    if s is None:
        return berth_values(plan)
    worker_id, topology_id, port = plan.worker_id, plan.topology_id, plan.port
    r = plan.resources
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
    mounts: list[LineMount] = [(cgroup_root, cgroup_root, True), (home, home, True),
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
    return LineValues(mounts=tuple(mounts), cores=zone.cores if zone else (), mems=zone.id if zone else None,
                      cgroup_parent=s.cgroup_parent or c.cgroup_parent, workdir=workdir,
                      cid_file=f"{root}/container.cid", seccomp=seccomp, cpu_percent=r.cpu_percent,
                      memory_mb=r.memory_mb if s.memory_enforcement else None,
                      argv=("bash", f"{workdir}/{SCRIPT_NAME}"), network=c.network)
