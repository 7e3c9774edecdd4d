"""berth's side of ``berth-worker-launcher``: Storm's worker-launcher commands, checked and done
by berth (root) for Storm's supervisor, so that the node needs no setuid program.

Storm's supervisor runs ``<launcher> <user> <command> <args…>`` for each step it takes as a
topology's user (``ClientSupervisorUtils.processLauncher``). The command forwards that argv here
unchanged; this module makes the checks Storm's ``main.c`` makes, in its order and with its exit
codes, plus berth's own: the user passes the node's policy (``_core.identity``), every path lies
in Storm's trees and is reached without following a link (``stormtrees``), a signal reaches only
a process of one of that user's own workers, and a profiler runs inside that worker's container.
Workers themselves are berth's plugin's to run, so ``worker`` and the docker/OCI commands are
refused with Storm's "invalid command" code and a message saying why.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._core.config import NodeConfig
from .._core.identity import Identity, resolve_identity
from .._exceptions import BerthError, IdentityError, LauncherRefused, PolicyError
from .._linux.proc import parent_and_group, real_uid
from .._runtimes.base import ExecResult, WorkerState
from . import stormtrees
from .stormdirs import StormDirs
from .stormtrees import ARTIFACTS, FAILED, STORMDIST, USERCACHE, Located

INVALID_ARGUMENT_NUMBER = 1
INVALID_COMMAND_PROVIDED = 3
UNABLE_TO_EXECUTE_CONTAINER_SCRIPT = 7
UNABLE_TO_SIGNAL_CONTAINER = 8
INVALID_CONTAINER_PID = 9
"""Storm's exit codes (``worker-launcher.h``) that this module gives; ``stormtrees`` has the path ones."""

ARGC = {"code-dir": 4, "artifacts-dir": 4, "blob": 4, "rmr": 4, "signal": 5, "profiler": 5}
"""Each command berth carries out, with Storm's ``argc`` for it (the program's name counted)."""
REFUSED = {"worker": 5, "launch-docker-container": 5, "run-docker-cmd": 5, "profile-docker-container": 5,
           "run-oci-container": 6, "reap-oci-container": 5, "profile-oci-container": 5}
MAX_ARGS = 8
MAX_ARG = 4096
WORK_S = 45.0
"""The longest one tree command runs before it stops with an error (the command's own timeout
is longer, so Storm hears why rather than a timeout)."""
MAX_OUTPUT = 200
"""Lines of a command's output (a profiler's) sent back; the end of it is kept."""

_NUMBER = re.compile(r"\s*[+-]?\d+")  # what C's strtol(…, 10) takes whole
_SIGNAL_MAX = 64


@dataclass(frozen=True)
class LauncherPolicy:
    """Who may ask (the uid of Storm's supervisor) and what the trees are given to (Storm's
    ``storm.worker-launcher.group``): the node's ``StormDirs``, as for the plugin's launches."""

    config: NodeConfig
    supervisor_user: str
    dirs: StormDirs

    @property
    def supervisor_uid(self) -> int:
        return self.dirs.supervisor_uid

    @property
    def gid(self) -> int:
        return self.dirs.launcher_gid


def resolve_policy(config: NodeConfig, dirs: StormDirs | None = None) -> LauncherPolicy | None:
    """The launcher's policy from ``storm.supervisor_user`` / ``storm.launcher_group``
    (``berth.storm.*`` in a storm.yaml); None when no supervisor user is set (the launcher then
    answers no one). An unknown user or group is a ``ConfigError`` naming the key."""
    if config.storm is None or config.storm.supervisor_user is None:
        return None
    return LauncherPolicy(config, config.storm.supervisor_user, dirs or StormDirs.from_config(config))


class Workers:
    """What the launcher needs of the node: its running workers (with their host pids), and a
    command run inside one of them."""

    def __init__(self, running: Callable[[], list[WorkerState]],
                 exec_in: Callable[[str, Sequence[str]], ExecResult]) -> None:
        self.running = running
        self.exec_in = exec_in


@dataclass
class Outcome:
    """What the command prints (Storm merges stderr into stdout) and its exit code."""

    code: int = 0
    output: list[str] = field(default_factory=list)


def run(argv: Sequence[str], policy: LauncherPolicy, workers: Workers) -> Outcome:
    """One launcher call: ``argv`` is what Storm passed after the program's name."""
    out = Outcome()
    try:
        out.code = _run(list(argv), policy, workers, out.output)
    except LauncherRefused as exc:
        out.output.append(f"ERROR: {exc}")
        out.code = exc.code
    except (BerthError, OSError) as exc:
        out.output.append(f"ERROR: {exc}")
        out.code = FAILED
    return out


def _run(argv: list[str], policy: LauncherPolicy, workers: Workers, output: list[str]) -> int:
    argc = len(argv) + 1
    if argc < 3:
        output.append("Usage: worker-launcher user command command-args")
        return INVALID_ARGUMENT_NUMBER
    if argc > MAX_ARGS + 1 or any(len(a.encode("utf-8", "surrogateescape")) > MAX_ARG for a in argv):
        raise LauncherRefused("argv", f"more than {MAX_ARGS} arguments or one longer than {MAX_ARG} bytes; refused",
                              INVALID_ARGUMENT_NUMBER)
    ident = check_user(argv[0], policy)
    command = argv[1]
    output.append(f"main : command provided {command}")
    output.append(f"main : user is {ident.user}")
    name = command.lower()  # Storm compares with strcasecmp
    want = ARGC.get(name) or REFUSED.get(name)
    if want is None:
        raise LauncherRefused("command", f"Invalid command {command} not supported.", INVALID_COMMAND_PROVIDED)
    if argc != want:
        raise LauncherRefused("argv", f"Incorrect number of arguments ({argc} vs {want}) for {name}",
                              INVALID_ARGUMENT_NUMBER)
    if name in REFUSED:
        raise LauncherRefused("command", f"{name} is not supported: under berth, Storm's workers are launched, "
                              "signalled and profiled by berth's isolation plugin (storm.resource.isolation.plugin), "
                              "each in its own container; this launcher only sets up and removes Storm's "
                              "directories (docs/storm.md)", INVALID_COMMAND_PROVIDED)
    args = argv[2:]
    if name == "signal":
        return signal_worker(args[0], args[1], ident, workers, output)
    if name == "profiler":
        return profile(args[0], args[1], ident, policy, workers, output)
    return _tree(name, args[0], ident, policy, output)


def check_user(user: str, policy: LauncherPolicy) -> Identity:
    """Storm's ``check_user`` (not root, exists, uid ≥ the minimum, not banned) and berth's
    policy (allowed users and groups), never Storm's supervisor's own user nor a member of its
    group or of the socket's (``StormDirs.check_identity``, as for a launch): all exit 255."""
    node = policy.config.node
    if user == policy.supervisor_user:
        raise LauncherRefused("user", f"{user!r} is Storm's supervisor's own user; refused", FAILED)
    try:
        ident = resolve_identity(user, node.min_uid, node.banned_users, allowed_users=node.allowed_users,
                                 allowed_groups=node.allowed_groups)
        policy.dirs.check_identity(ident)  # as for a launch: not in Storm's launcher group, nor the socket's
    except (IdentityError, PolicyError) as exc:
        raise LauncherRefused("user", exc.reason, FAILED) from exc
    return ident


def _tree(name: str, path: str, ident: Identity, policy: LauncherPolicy, output: list[str]) -> int:
    where = stormtrees.locate(stormtrees.roots(policy.config), path)
    if not allowed(name, where, ident.user):
        raise LauncherRefused("path", f"{name} may not change {path} (in Storm's {where.tree} tree); refused",
                              stormtrees.UNABLE_TO_BUILD_PATH)
    owners = (0, policy.supervisor_uid, ident.uid)
    deadline = time.monotonic() + WORK_S
    if name == "rmr":
        if not stormtrees.remove(where, owners, deadline):
            output.append(f"{path} does not exist: nothing to delete")
        return 0
    notes = stormtrees.set_permissions(where, (ident.uid, policy.gid), name == "artifacts-dir", owners, deadline)
    output.extend(notes)
    return 0


def allowed(command: str, where: Located, user: str) -> bool:
    """Where each command may act, from the calls Storm's code makes (docs/storm.md): the topology
    code dir; the artifacts trees (and the topology's shared dir); a user's own blob cache, and
    the artifacts (the logviewer's ``blob`` on a log file); ``rmr`` anywhere in those and in
    ``workers/``."""
    tree, rest = where.tree, where.rest
    own_cache = tree == USERCACHE and rest[0] == user
    if command == "code-dir":
        return tree == STORMDIST
    if command == "artifacts-dir":
        return tree == ARTIFACTS or (tree == STORMDIST and len(rest) >= 2 and rest[1] == "shared_by_topology")
    if command == "blob":
        return own_cache or tree == ARTIFACTS
    return tree != USERCACHE or own_cache  # rmr


def _number(text: str, what: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise LauncherRefused(what, f"Illegal argument for {what} {text}", INVALID_ARGUMENT_NUMBER)
    return int(text)


def signal_worker(pid_arg: str, sig_arg: str, ident: Identity, workers: Workers, output: list[str]) -> int:
    """Storm's ``signal_container_as_user``, for processes of berth's workers only: ``pid`` (as the
    node sees it) must be a process of a running worker of ``ident``'s, running as that user. Its
    process group gets the signal when it leads one, as Storm does, but only the group's members
    in that same worker. Each process is held by a pidfd while it is checked and signalled, so a
    pid reused meanwhile is never signalled."""
    pid = _number(pid_arg, "container pid")
    sig = _number(sig_arg, "signal")
    if pid <= 0:
        return INVALID_CONTAINER_PID
    mains = {w.pid: w.worker_id for w in workers.running() if w.user == ident.user and w.pid}
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, OverflowError):  # no such process (or a thread's id, or past any pid)
        return INVALID_CONTAINER_PID
    try:
        worker = _worker_of(pid, ident.uid, mains)
        if worker is None:
            raise LauncherRefused("pid", f"Failed signalling container {pid} with {sig} - Operation not permitted "
                                  f"(not a process of a worker of {ident.user})", FAILED)
        if not 0 <= sig <= _SIGNAL_MAX:
            raise LauncherRefused("signal", f"Failed signalling process {pid} with signal {sig} - Invalid argument",
                                  UNABLE_TO_SIGNAL_CONTAINER)
        members = _group_members(pid, ident.uid, mains, worker)
        for member in members:  # before the leader: its end would reparent them, out of the worker's tree
            _signal_member(member, sig, ident.uid, mains, worker)
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return INVALID_CONTAINER_PID
    finally:
        os.close(pidfd)
    output.append(f"Killing process {'group ' if members else ''}{pid} with {sig}")
    return 0


def _worker_of(pid: int, uid: int, mains: dict[int, str]) -> str | None:
    """The worker whose main process ``pid`` is or descends from, if ``pid`` runs as ``uid``."""
    try:
        if real_uid(pid) != uid:
            return None
        p = pid
        for _ in range(4096):
            if p in mains:
                return mains[p]
            if p <= 1:
                return None
            p = parent_and_group(p)[0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return None


def _group_members(leader: int, uid: int, mains: dict[int, str], worker: str) -> list[int]:
    """The other processes of ``leader``'s process group when it leads one, in the same worker."""
    try:
        if parent_and_group(leader)[1] != leader:
            return []
    except (OSError, ValueError, IndexError):
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == leader:
            continue
        try:
            if parent_and_group(entry)[1] == leader and _worker_of(int(entry), uid, mains) == worker:
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _signal_member(pid: int, sig: int, uid: int, mains: dict[int, str], worker: str) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if _worker_of(pid, uid, mains) == worker:  # checked again with the process held
            signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def profile(dir_arg: str, script_arg: str, ident: Identity, policy: LauncherPolicy, workers: Workers,
            output: list[str]) -> int:
    """Storm's ``profiler <artifacts dir> <script>``, run inside the container of the worker that
    writes to that artifacts dir (``<topology>/<port>``), as the worker's user: the script names
    the worker's pid as the worker sees it, and the worker's tools are in its image. Its exit
    code is the command's, as Storm's launcher ``exec``s the script."""
    trees = stormtrees.roots(policy.config)
    where = stormtrees.locate(trees, dir_arg)
    script = stormtrees.locate(trees, script_arg)
    if where.tree != ARTIFACTS or len(where.rest) != 2 or script.tree != ARTIFACTS or script.rest[:-1] != where.rest:
        raise LauncherRefused("path", f"profiler: {dir_arg} must be a worker's artifacts dir (<topology>/<port>) and "
                              f"{script_arg} a file in it; refused", stormtrees.UNABLE_TO_BUILD_PATH)
    topology, port = where.rest
    found = [w for w in workers.running()
             if w.topology_id == topology and str(w.port) == port and w.user == ident.user]
    if not found:
        raise LauncherRefused("worker", f"no running worker of {ident.user} writes to {dir_arg}: nothing to profile",
                              UNABLE_TO_EXECUTE_CONTAINER_SCRIPT)
    with stormtrees.parent_dir(script, (0, policy.supervisor_uid, ident.uid)) as pfd:
        try:
            if pfd is None:
                raise FileNotFoundError
            st = os.stat(script.rest[-1], dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise LauncherRefused("path", f"Can't open file {script_arg}", FAILED) from None
    if not stat.S_ISREG(st.st_mode):
        raise LauncherRefused("path", f"{script_arg} is not a plain file (a link is not followed)", FAILED)
    try:
        result = workers.exec_in(found[0].worker_id, ["bash", script_arg])
    except BerthError as exc:
        raise LauncherRefused("worker", f"Couldn't execute {script_arg} in worker {found[0].worker_id}: "
                              f"{exc.reason}", UNABLE_TO_EXECUTE_CONTAINER_SCRIPT) from exc
    lines = result.output.decode("utf-8", "replace").splitlines()
    output.extend(lines[-MAX_OUTPUT:])
    return result.exit_code & 0xFF
