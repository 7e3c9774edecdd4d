"""A Storm-launched worker's directories: Storm's supervisor made them; berth gives them to the
worker as Storm's setuid ``worker-launcher`` would, and removes them at cleanup.

Storm's ``Container.setup`` makes ``workers/<id>/{pids,tmp,heartbeats}``, the artifacts dir, the
user file and the links before it asks the plugin to launch, and it deletes them itself after
``cleanup``. So berth makes none of them (``WorkerDirs`` is ``workdirs``' other half): it checks
they are Storm's (plain directories of root, of the supervisor's user or already of the worker's
user, never reached through a link), and sets the ownership and modes that the launcher's
``worker`` and ``artifacts-dir`` commands set (``setup_dir_permissions`` in Storm's
worker-launcher.c): ``user:<launcher group>``, the user keeps read and execute and may write, the
group reads and writes, others get nothing, directories get group execute and setgid (not ``tmp``,
the worker's ``/tmp``, where setgid would break the JVM's attach files); and what its ``code-dir``
sets on the topology's code (``stormdist/<topology>``: the same, not writable by the user), so that
no other tenant's worker, which sees the whole supervisor dir, reads another topology's jar or conf.
The supervisor (in the launcher group) then reads the worker's heartbeats and can delete what the
worker made.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .._core.config import NodeConfig
from .._core.identity import Identity
from .._core.layout import worker_root
from .._core.limits import key_of
from .._core.plan import Plan
from .._core.spec import ID_PATTERN
from .._exceptions import ConfigError, PolicyError, SpecError
from . import workdirs
from .stormtrees import give

MAX_ENTRIES = 65536
"""Entries given to the worker in one directory tree. At a launch, Storm has just made the worker's
root (a handful of entries) and the artifacts dir is reused only by this topology's own workers;
past this the launch is refused rather than spend the launch on a walk."""
STORM_STATE = ("localstate", "isupervisor", "tmp")
"""What Storm's supervisor keeps in its ``supervisor/`` dir beside ``stormdist``: its own alone."""


@dataclass(frozen=True)
class StormDirs:
    """``WorkerDirs`` for workers Storm's supervisor launches through berth's plugin."""

    supervisor_uid: int
    """The user Storm's supervisor runs as: it made the directories, and a worker never runs as it."""
    launcher_gid: int
    """The group the worker's directories get (Storm's ``storm.worker-launcher.group``)."""
    forbidden_gids: frozenset[int] = frozenset()
    """Groups no worker's user may be in: the launcher group and berth's API socket group."""

    @classmethod
    def from_config(cls, config: NodeConfig) -> StormDirs:
        """From ``storm.supervisor_user`` (required) and ``storm.launcher_group`` (default: that
        user's primary group); ``ConfigError`` naming the key when either is unknown here."""
        import pwd

        s = config.storm
        key = key_of(config, "storm.supervisor_user")
        if s is None or s.supervisor_user is None:
            raise ConfigError(key, "is required to run workers for Storm (the user Storm's supervisor runs as)")
        try:
            pw = pwd.getpwnam(s.supervisor_user)
        except KeyError:
            raise ConfigError(key, f"no such user {s.supervisor_user!r} on this node") from None
        gid = pw.pw_gid
        if s.launcher_group is not None:
            gid = _gid(config, "storm.launcher_group", s.launcher_group)
        forbidden = {gid}
        if config.api.socket_group:
            forbidden.add(_gid(config, "api.socket_group", config.api.socket_group))
        return cls(pw.pw_uid, gid, frozenset(forbidden))

    def check_identity(self, ident: Identity) -> None:
        """A worker's user is neither Storm's supervisor's nor in a group that reaches every
        worker's files (the launcher group) or berth's socket."""
        if ident.uid == self.supervisor_uid:
            raise PolicyError("user", f"{ident.user!r} is the user Storm's supervisor runs as; workers run as "
                              "the topology's user")
        shared = sorted(set(ident.groups) & self.forbidden_gids)
        if shared:
            raise PolicyError("user", f"{ident.user!r} is in group {shared[0]}, Storm's launcher group or berth's "
                              "API socket group: its workers could read every worker's files or reach berth")

    def prepare(self, plan: Plan, made: list[Path]) -> None:
        """Give Storm's directories of this worker to its user (see the module), then write the
        worker script. ``made`` gets only what berth writes (the script): Storm's are not berth's
        to roll back."""
        ident = plan.identity
        self.check_identity(ident)
        lay = plan.layout
        owners = {0, self.supervisor_uid, ident.uid}
        code = os.path.dirname(lay.shared_by_topology)
        for path, what in ((lay.worker_root, "the worker's root"), (lay.worker_tmp, "its tmp"),
                           (lay.supervisor_dir, "the supervisor dir"), (lay.artifacts, "its artifacts dir"),
                           (code, "the topology's code dir"), (lay.shared_by_topology, "the topology's shared dir")):
            _check_dir(path, what, owners if path != lay.supervisor_dir else {0, self.supervisor_uid})
        _check_file(lay.user_file, owners)
        # The launcher's `worker` command: the whole root user-writable with setgid dirs, then tmp without.
        self._close_storm_state(lay.supervisor_dir)
        give(lay.worker_root, ident.uid, self.launcher_gid, setgid=True, max_entries=MAX_ENTRIES)
        give(lay.worker_tmp, ident.uid, self.launcher_gid, setgid=False, max_entries=MAX_ENTRIES)
        # `code-dir` on the topology's code (every launch: Storm may have updated a blob since), then
        # `artifacts-dir` on its shared dir, as Storm's localizer runs them; `artifacts-dir` on the
        # artifacts dir once (it holds every earlier worker's logs of this topology and port).
        give(code, ident.uid, self.launcher_gid, setgid=True, user_write=False, max_entries=MAX_ENTRIES)
        give(lay.shared_by_topology, ident.uid, self.launcher_gid, setgid=True, max_entries=MAX_ENTRIES)
        st = os.stat(lay.artifacts, follow_symlinks=False)
        if (st.st_uid, st.st_gid) != (ident.uid, self.launcher_gid) or st.st_mode & 0o2777 != 0o2770:
            give(lay.artifacts, ident.uid, self.launcher_gid, setgid=True, max_entries=MAX_ENTRIES)
        workdirs.write(Path(plan.script_path), plan.script.encode("utf-8"), made, mode=0o550, owner=(0, ident.gid))

    def _close_storm_state(self, supervisor: str) -> None:
        """Every worker sees the supervisor dir (read-only, as DockerManager mounts it) for its
        topology's code in ``stormdist``; Storm's own state beside it (``localstate``: every slot's
        assignment, owner and worker id; ``isupervisor``; ``tmp``: blobs on their way) loses what
        others may do. Only the supervisor's own directories, never through a link."""
        pfd = os.open(supervisor, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for name in STORM_STATE:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as exc:
                    raise PolicyError("directories", f"{supervisor}/{name} is not a plain directory of Storm's "
                                      f"({exc.strerror})") from exc
                try:
                    st = os.fstat(fd)
                    if st.st_uid == self.supervisor_uid and st.st_mode & 0o007:
                        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o007)
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)

    def remove(self, config: NodeConfig, worker_id: str) -> None:
        """The worker's root, all of it: Storm's supervisor deletes it next, and as its own user it
        cannot delete what the worker made in directories of its own. The user file is Storm's."""
        if not ID_PATTERN.fullmatch(worker_id):
            raise SpecError("worker_id", f"{worker_id!r} is not a worker id")
        workdirs.remove_tree(worker_root(config, worker_id))


def _gid(config: NodeConfig, key: str, name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(key_of(config, key), f"no such group {name!r} on this node") from None


def _check_dir(path: str, what: str, owners: set[int]) -> None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise PolicyError("directories", f"{path} ({what}) does not exist: Storm's supervisor makes it before "
                          "it asks for a launch (is berth's storm.yaml the supervisor's?)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PolicyError("directories", f"{path} ({what}) is not a plain directory; refusing to follow it")
    if st.st_uid not in owners:
        raise PolicyError("topology_id", f"{path} ({what}) belongs to uid {st.st_uid}, neither to Storm's "
                          "supervisor nor to the worker's user")


def _check_file(path: str, owners: set[int]) -> None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise PolicyError("directories", f"{path} (the worker's user file) does not exist: Storm's supervisor "
                          "writes it before it asks for a launch") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in owners:
        raise PolicyError("directories", f"{path} (the worker's user file) is not a plain file of Storm's")
