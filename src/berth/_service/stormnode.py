"""berth under a real Storm supervisor (``berth serve --storm``): isolation only, no restarts.

Storm's supervisor runs its own Slot state machine: it decides when a worker starts, when it is
killed and when it is started again. So here there is no desired state and no reconcile loop
(berth's ``Supervisor`` stops every worker that is not assigned to it, and restarts what exits):
each call of Storm's plugin is one operation on the node, and each worker is launched once.
What berth adds is what Storm's plugins get wrong: exits with the worker's own code, each handed to
the plugin exactly once (``stormexits``), also across restarts of berth and of Storm's supervisor;
an exact-id liveness check; memory from the cgroup; and no setuid launcher.

A sweep (at start and every ``SWEEP_S``) finds what a restart or an unreachable berth let slip:
ended workers whose exit is not in the ledger yet, and workers whose directory Storm deleted
without reaching berth (Storm has forgotten them: they are stopped and removed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .._core.config import NodeConfig
from .._core.layout import worker_root
from .._core.spec import WorkerSpec
from .._exceptions import BerthError, PolicyError, WorkerNotFound, WorkerNotRunning
from .._linux import cgroup as _cgroup
from .._node.node import Node, WorkerHandle
from .._node.stormdirs import StormDirs
from .._paths import is_under
from .._runtimes.base import ExecResult, ExitRecord, Runtime, WorkerStatus
from .lock import SupervisorLock, check_claim, foreign_owners
from .stormexits import ExitLedger

log = logging.getLogger("berth.storm")

SWEEP_S = 30.0
MAX_CLEANED = 4096
MAX_KILLS = 16
"""SIGTERMs (each waits out the grace period, then SIGKILLs) in flight at once."""


class StormService:
    """The node's side of Storm's ``ResourceIsolationInterface``; thread-safe."""

    def __init__(self, config: NodeConfig, runtime: Runtime | None = None, node: Node | None = None,
                 dirs: StormDirs | None = None) -> None:
        self.config = config
        self.dirs = dirs or StormDirs.from_config(config)
        self.node = node or Node(config, runtime=runtime, dirs=self.dirs)
        self.node.dirs = self.dirs
        self.node.set_default_callback(self._on_exit)
        self.ledger = ExitLedger(config.state_dir)
        self.lock = SupervisorLock(config.state_dir)
        self._kills = ThreadPoolExecutor(MAX_KILLS, thread_name_prefix="berth-storm-kill")
        self._killing: set[str] = set()
        self._profiling: set[str] = set()
        self._mu = threading.Lock()
        self._sweep_lock = threading.Lock()
        """One sweep at a time."""
        self._cleaned: dict[str, None] = {}
        """Worker ids cleaned up (the latest ``MAX_CLEANED``): Storm launches an id once, so a sweep
        that listed one of these before its cleanup never records its exit again."""
        self._quit = threading.Event()
        self._sweeper: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Take the node's lock, load the ledger, adopt running workers, record exits that
        happened while berth was down, then sweep every ``SWEEP_S``."""
        self.lock.acquire(node=self.config.node.name, state_dir=self.config.state_dir, mode="storm")
        try:
            self.node.check_state()
            self.ledger.load()
            check_claim(self.node.ps(), self.config.state_dir, self.config.node.name)
            report = self.node.recover()
            self.sweep()
        except BaseException:
            self.lock.release()
            raise
        log.info("storm mode: %d worker(s) adopted, %d exit(s) found, %d half-made removed",
                 len(report.adopted), len(report.reported), len(report.removed))
        self._sweeper = threading.Thread(target=self._sweep_loop, name="berth-storm-sweep", daemon=True)
        self._sweeper.start()

    def stop(self) -> None:
        """Stop serving; the workers keep running (Storm's, not berth's, to stop)."""
        self._quit.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=30)
        self._kills.shutdown(wait=False, cancel_futures=True)
        self.node.close()
        self.lock.release()

    def _sweep_loop(self) -> None:
        while not self._quit.wait(SWEEP_S):
            try:
                self.sweep()
            except Exception as exc:  # the next sweep tries again; the API goes on meanwhile
                log.warning("sweep failed: %s", exc, exc_info=not isinstance(exc, BerthError))

    def sweep(self) -> None:
        with self._sweep_lock:
            listed = self.node.ps()
            others = {w for ids in foreign_owners(listed, self.config.state_dir).values() for w in ids}
            listed = [w for w in listed if w.worker_id not in others]  # another berth's, on this engine
            present = {w.worker_id for w in listed}
            for w in listed:
                if w.state == WorkerStatus.EXITED and not self.ledger.known(w.worker_id):
                    rec = self.node.exit_record(w.worker_id)
                    with self._mu:  # (the cleaned set and the add together: a cleanup may be under way)
                        if rec is not None and w.worker_id not in self._cleaned:
                            self.ledger.add(rec)
            for wid in self.ledger.acked_ids() - present:
                self.ledger.drop(wid)  # removed (cleanup went through); nothing to keep it for
            workers = os.path.join(self.config.node.local_dir, "workers")
            if not os.path.isdir(workers):
                if listed:  # a moved local dir, a disk not mounted yet: not Storm forgetting its workers
                    log.warning("%s does not exist: is storm.local.dir Storm's? no worker is taken for forgotten",
                                workers)
                return
            for w in listed:
                if w.state != WorkerStatus.CREATED and not os.path.isdir(worker_root(self.config, w.worker_id)):
                    self._forgotten(w.worker_id, w.running)

    def _forgotten(self, worker_id: str, running: bool) -> None:
        log.warning("worker %s: Storm's supervisor deleted its directory without reaching berth; %s", worker_id,
                    "stopping and removing it" if running else "removing it")
        self._mark_cleaned(worker_id)
        try:
            if running:
                self.node.force_kill(worker_id)
            self.node.cleanup(worker_id)
            self.ledger.drop(worker_id)
        except BerthError as exc:
            log.warning("worker %s: %s", worker_id, exc)

    def _mark_cleaned(self, worker_id: str) -> None:
        with self._mu:
            self._cleaned[worker_id] = None
            while len(self._cleaned) > MAX_CLEANED:
                self._cleaned.pop(next(iter(self._cleaned)))

    def _on_exit(self, rec: ExitRecord) -> None:
        with self._mu:  # a cleanup's own removal of a running container ends it too: not news for Storm
            if rec.worker_id not in self._cleaned:
                self.ledger.add(rec)

    # -- what Storm's plugin asks --------------------------------------------------------------

    def launch(self, spec: WorkerSpec, target_dir: str, numa_id: str | None = None) -> WorkerHandle:
        """Launch once, into the directory Storm's supervisor made; its exit goes to the ledger."""
        expected = worker_root(self.config, spec.worker_id)
        if os.path.normpath(target_dir) != expected:
            raise PolicyError("target_dir", f"{target_dir} is not {expected}: Storm's storm.local.dir and "
                              "berth's differ (give berth the supervisor's storm.yaml)")
        zone = self.config.storm.zone_for(spec.port) if self.config.storm else None
        if numa_id != (zone.id if zone else None):
            raise PolicyError("numa_id", f"Storm binds port {spec.port} to NUMA zone {numa_id}, berth to "
                              f"{zone.id if zone else None}: their supervisor.numa.meta differ")
        if self.ledger.known(spec.worker_id):
            raise PolicyError("worker_id", f"worker {spec.worker_id!r} ran already; Storm launches a worker id once")
        return self.node.launch(spec, on_exit=self._on_exit)

    def kill(self, worker_id: str) -> None:
        """SIGTERM now, SIGKILL after the grace period, without waiting (Storm sleeps, looks,
        and force-kills on its own); unknown ids are not an error (already gone)."""
        self.node.inspect(worker_id)  # WorkerNotFound at once, not in the pool
        with self._mu:
            if worker_id in self._killing:
                return
            self._killing.add(worker_id)
        try:
            self._kills.submit(self._kill, worker_id)
        except RuntimeError:  # shutting down
            with self._mu:
                self._killing.discard(worker_id)

    def _kill(self, worker_id: str) -> None:
        try:
            self.node.kill(worker_id, self.config.supervisor.grace_s)
        except WorkerNotFound:
            pass
        except BerthError as exc:
            log.warning("kill of %s: %s", worker_id, exc)
        finally:
            with self._mu:
                self._killing.discard(worker_id)

    def force_kill(self, worker_id: str) -> None:
        with contextlib.suppress(WorkerNotFound, WorkerNotRunning):
            self.node.force_kill(worker_id)

    def all_dead(self, worker_id: str) -> bool:
        return self.node.all_dead(worker_id)

    def memory_usage(self, worker_id: str) -> int:
        """Bytes from the worker's cgroup; -1 when it does not run (Storm counts that as 0)."""
        try:
            return self.node.memory_usage(worker_id)
        except (WorkerNotFound, WorkerNotRunning):
            return -1

    def free_memory_mb(self) -> tuple[int, str]:
        """What Storm's memory enforcement may still count on, in MiB, and where it comes from:
        the host's MemAvailable, or what the workers' cgroup parent has left under its limit
        when one is set and that is less."""
        avail = mem_available_mb()
        where = _cgroup.memory_dir_for(self.config.container.cgroup_parent)
        if where is not None:
            left = cgroup_left_mb(*where)
            if left is not None and left < avail:
                return left, f"cgroup {self.config.container.cgroup_parent}"
        return avail, "MemAvailable"

    def cleanup(self, worker_id: str) -> None:
        """The container, the worker's directory tree and its exit: Storm deletes the rest. Holds
        nothing another worker's call waits for (a worker can make its tree slow to remove)."""
        self._mark_cleaned(worker_id)
        self.node.cleanup(worker_id)
        with self._mu:
            self.ledger.drop(worker_id)

    def profile(self, worker_id: str, command: Sequence[str]) -> ExecResult:
        """Storm's profiler command inside the worker's container, as its user; one at a time.

        Storm's command is ``${storm.home}/bin/<worker.profiler.command>``: STORM_HOME is mounted at
        the same path, so a script missing there is said plainly (a STORM_HOME made from Maven's
        jars has no ``flight.bash``) rather than as the runtime's exec error."""
        home = self.config.node.install_dir
        if command and home and is_under(os.path.normpath(command[0]), home) and not os.path.isfile(command[0]):
            raise PolicyError("command", f"{command[0]} does not exist in STORM_HOME ({home}), which the worker sees "
                              "read-only: install the profiler script there (Storm's bin/flight.bash), or leave "
                              "worker.profiler.enabled off")
        with self._mu:
            if worker_id in self._profiling:
                raise PolicyError("worker_id", f"a profiling command of {worker_id!r} is already running")
            self._profiling.add(worker_id)
        try:
            return self.node.exec(worker_id, command)
        finally:
            with self._mu:
                self._profiling.discard(worker_id)


def mem_available_mb(proc: str = "/proc") -> int:
    """``MemAvailable`` of ``/proc/meminfo`` in MiB (the kernel's estimate of what can be
    allocated without swapping); ``OSError``/``ValueError`` when the kernel does not say."""
    with open(os.path.join(proc, "meminfo"), encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise ValueError("no MemAvailable in meminfo")


def cgroup_left_mb(directory: str, version: int) -> int | None:
    """A memory cgroup's limit less its usage, in MiB; None when it has no limit (or is missing)."""
    limit_file, usage_file = (("memory.limit_in_bytes", "memory.usage_in_bytes") if version == 1
                              else ("memory.max", "memory.current"))
    try:
        with open(os.path.join(directory, limit_file), encoding="ascii") as fh:
            raw = fh.read().strip()
        if raw == "max" or int(raw) >= 1 << 62:  # v2 "max"; v1's "no limit" is a page-rounded LONG_MAX
            return None
        return max(0, int(raw) - _cgroup.read_int(os.path.join(directory, usage_file))) // (1024 * 1024)
    except (OSError, ValueError):
        return None


def socket_unreachable(path: str, mode: int, group: int, uid: int, gids: set[int]) -> str | None:
    """Why the user ``uid`` (in ``gids``) could not connect to a unix socket at ``path`` whose
    mode and group will be ``mode`` and ``group`` (every directory above it searchable, the socket
    writable), or None. Root passes everything."""
    if uid == 0:
        return None
    here = "/"
    for part in [p for p in os.path.dirname(os.path.abspath(path)).split("/") if p]:
        here = os.path.join(here, part)
        try:
            st = os.stat(here)
        except FileNotFoundError:
            break  # made by serve (0755)
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid in gids else stat.S_IXOTH
        if not st.st_mode & bit:
            return (f"{here} (mode {st.st_mode & 0o7777:04o}, uid {st.st_uid}, gid {st.st_gid}) lets it through "
                    "no further")
    if not mode & (stat.S_IWGRP if group in gids else stat.S_IWOTH):
        return f"the socket gets mode {mode:04o} and group {group}, and the user is not in that group"
    return None
