"""The node: berth's ``ResourceIsolationInterface`` (reserve, launch, kill, watch, report).

One watcher thread consumes the runtime's exit stream for every worker; on each (re)connect it
reconciles with a listing, so an exit that happened while the stream was down is still found.
Each exit is journalled under the state dir before its callback runs, which is how a restarted
berth knows which exits it has already reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import NodeConfig
from ._exceptions import BerthError, EngineError, LaunchError, PolicyError, WorkerNotFound
from ._host import HostFacts
from ._plan import Plan, plan_for
from ._runtime import ExecResult, ExitRecord, Runtime, WorkerState
from ._spec import WorkerSpec

log = logging.getLogger("berth.node")

ExitCallback = Callable[[ExitRecord], None]


@dataclass(frozen=True)
class Reservation:
    memory_mb: int | None
    cpu_percent: int | None
    numa_node: int | None = None


@dataclass(frozen=True)
class WorkerHandle:
    """What a launch returns: enough to find the worker again and to explain it."""

    worker_id: str
    container_id: str
    plan: Plan


@dataclass
class RecoveryReport:
    adopted: list[str] = field(default_factory=list)
    """Running workers now watched again."""
    reported: list[ExitRecord] = field(default_factory=list)
    """Workers that exited while berth was down, reported now with their real exit codes."""
    removed: list[str] = field(default_factory=list)
    """Half-made workers (created, never started) that were removed."""


def make_runtime(config: NodeConfig) -> Runtime:
    if config.node.runtime == "docker":
        from ._docker import DockerRuntime

        return DockerRuntime(config)
    from ._process import ProcessRuntime

    return ProcessRuntime(config)


def _remove_worker_files(root: str, user_file: str) -> None:
    """A worker's root (never followed if it is a symlink) and its user file; artifacts stay."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(root)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(user_file)


class _ExitJournal:
    """One small file per reported exit, so exactly-once survives a restart of berth."""

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir, "exits")

    def ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, probe = tempfile.mkstemp(dir=self.dir, prefix=".probe-")
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise LaunchError("state", f"state dir {self.dir} is not writable: {exc.strerror}") from None

    def known(self) -> set[str]:
        try:
            return {p.stem for p in self.dir.glob("*.json")}
        except OSError:
            return set()

    def record(self, rec: ExitRecord) -> None:
        tmp = self.dir / f".{rec.container_id}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_text(json.dumps(rec.to_dict()))
            tmp.replace(self.dir / f"{rec.container_id}.json")
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.error("cannot journal the exit of %s (%s): it may be reported again after a restart",
                      rec.worker_id, exc)

    def forget(self, container_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.dir / f"{container_id}.json").unlink()


class Node:
    """Launches, watches and reports the workers of one node."""

    def __init__(self, config: NodeConfig, runtime: Runtime | None = None,
                 on_exit: ExitCallback | None = None, host: HostFacts | None = None) -> None:
        self.config = config
        self.runtime = runtime if runtime is not None else make_runtime(config)
        self.host = host or HostFacts.probe()
        self._default_cb = on_exit
        self._lock = threading.RLock()
        self._callbacks: dict[str, ExitCallback] = {}
        self._reservations: dict[str, Reservation] = {}
        self._watched: set[str] = set()
        self._launching: set[str] = set()
        self._adopt_all = False
        self._journal = _ExitJournal(config.state_dir)
        self._reported: set[str] = self._journal.known()
        self._exits: dict[str, ExitRecord] = {}
        self._exit_cond = threading.Condition(self._lock)
        self._watcher: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._closing = False

    # -- reservations and launch ------------------------------------------------------------

    def reserve(self, worker_id: str, memory_mb: int | None, cpu_percent: int | None,
                numa_node: int | None = None) -> None:
        """Record the resources the scheduler assigned; the next launch of ``worker_id`` uses them."""
        with self._lock:
            self._reservations[worker_id] = Reservation(memory_mb, cpu_percent, numa_node)

    def plan(self, spec: WorkerSpec) -> Plan:
        res = self._reservations.get(spec.worker_id)
        if res is not None:
            updates: dict[str, Any] = {}
            for key in ("memory_mb", "cpu_percent", "numa_node"):
                reserved, asked = getattr(res, key), getattr(spec, key)
                if reserved is None:
                    continue
                if asked is not None and asked != reserved:
                    raise PolicyError(key, f"the request asks {asked} but {reserved} was reserved")
                updates[key] = reserved
            spec = spec.model_copy(update=updates)
        return plan_for(spec, self.config, self.host)

    def launch(self, spec: WorkerSpec, on_exit: ExitCallback | None = None) -> WorkerHandle:
        """Create the worker's directories, script and container, and start it.

        Either the worker runs, or a ``BerthError`` is raised and nothing the launch made is
        left behind (container, directories, files).
        """
        plan = self.plan(spec)
        with self._lock:
            if plan.worker_id in self._launching:
                raise PolicyError("worker_id", f"a launch of {plan.worker_id!r} is already under way")
            self._launching.add(plan.worker_id)
        try:
            return self._launch(plan, on_exit)
        finally:
            with self._lock:
                self._launching.discard(plan.worker_id)

    def _launch(self, plan: Plan, on_exit: ExitCallback | None) -> WorkerHandle:
        try:
            existing = self.runtime.inspect(plan.worker_id)
        except WorkerNotFound:
            existing = None
        if existing is not None:
            raise PolicyError("worker_id", f"worker {plan.worker_id!r} already exists on this node "
                              f"({existing.state}); remove it first")
        if not self.runtime.image_present(plan.image):
            raise LaunchError("image", f"image {plan.image!r} is not in the engine; berth never pulls "
                              "(build or load it on the node)")
        self._journal.ensure()
        if on_exit is not None or self._default_cb is not None:
            self._ensure_watching()
        if on_exit is not None:
            with self._lock:
                self._callbacks[plan.worker_id] = on_exit
        made: list[Path] = []
        step = "directories"
        container_id: str | None = None
        try:
            self._remove_stale(plan)
            self._make_dirs(plan, made)
            step = "script"
            self._write(Path(plan.script_path), plan.script.encode("utf-8"), made, mode=0o550,
                        owner=(0, plan.identity.gid))
            step = "create"
            container_id = self.runtime.create(plan)
            with self._lock:
                self._watched.add(container_id)
            step = "cidfile"
            self._write(Path(plan.cid_file), container_id.encode() + b"\n", made, mode=0o644)
            step = "start"
            self.runtime.start(plan.worker_id)
        except (BerthError, OSError) as exc:
            self._rollback(plan.worker_id, container_id, made)
            reason = exc.reason if isinstance(exc, BerthError) else f"{exc.strerror or exc}"
            raise LaunchError(step, reason) from None
        return WorkerHandle(plan.worker_id, container_id, plan)

    @staticmethod
    def _remove_stale(plan: Plan) -> None:
        """No container of this worker exists (checked): its old root and user file are leftovers,
        and the root was the worker's to tamper with (symlinks), so it is not reused."""
        _remove_worker_files(plan.layout.worker_root, plan.layout.user_file)

    def _make_dirs(self, plan: Plan, made: list[Path]) -> None:
        lay, ident = plan.layout, plan.identity
        owner = (ident.uid, ident.gid)
        self._mkdir(Path(lay.supervisor_dir), made)
        self._mkdir(Path(lay.shared_by_topology), made, owner=owner, mode=0o750)
        self._mkdir(Path(lay.worker_root), made, owner=owner, mode=0o750)
        self._mkdir(Path(lay.worker_tmp), made, owner=owner, mode=0o700)
        self._mkdir(Path(lay.artifacts), made, owner=owner, mode=0o750)
        self._mkdir(Path(lay.user_file).parent, made)
        self._write(Path(lay.user_file), ident.user.encode() + b"\n", made, mode=0o644)

    @staticmethod
    def _mkdir(path: Path, made: list[Path], owner: tuple[int, int] | None = None, mode: int = 0o755) -> None:
        """Make ``path`` (and missing parents, root-owned); give it to ``owner`` without ever
        following a symlink, and never take a directory away from another user."""
        missing = []
        p = path
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=0o755)
            except FileExistsError:
                continue  # a concurrent launch made it: it is not ours to roll back
            made.append(d)
        if owner is None:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise PolicyError("directories", f"{path} is not a plain directory ({exc.strerror}); refusing "
                              "to follow it") from None
        try:
            uid = os.fstat(fd).st_uid
            if uid not in (0, owner[0]):
                # A topology runs as one user: its shared and artifacts dirs are not handed over to
                # whoever names the same topology in a request.
                raise PolicyError("topology_id", f"{path} belongs to uid {uid}, not to the worker's user "
                                  f"(uid {owner[0]})")
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    @staticmethod
    def _write(path: Path, data: bytes, made: list[Path], mode: int, owner: tuple[int, int] | None = None) -> None:
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        if not existed:
            made.append(path)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)

    def _rollback(self, worker_id: str, container_id: str | None, made: list[Path]) -> None:
        if container_id is not None:
            with contextlib.suppress(BerthError):
                self.runtime.remove(worker_id)
            with self._lock:
                self._watched.discard(container_id)
        with self._lock:
            self._callbacks.pop(worker_id, None)
        # Children before parents; shared parents (workers/, the topology's dirs) only if empty,
        # since a concurrent launch may be using a directory this one happened to create.
        for p in reversed(made):
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()
                else:
                    p.unlink()

    # -- lifecycle ---------------------------------------------------------------------------

    def kill(self, worker_id: str, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``. The container stays until ``cleanup``."""
        self.runtime.stop(worker_id, grace_s)

    def force_kill(self, worker_id: str) -> None:
        self.runtime.force_kill(worker_id)

    def all_dead(self, worker_id: str) -> bool:
        """True when no process of the worker runs (exact match on its label)."""
        try:
            return not self.runtime.inspect(worker_id).running
        except WorkerNotFound:
            return True

    def memory_usage(self, worker_id: str) -> int:
        return self.runtime.memory_usage(worker_id)

    def profile(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        """Run a command inside the worker's container, as the worker's user."""
        return self.runtime.exec(worker_id, argv)

    def logs(self, worker_id: str) -> bytes:
        return self.runtime.logs(worker_id)

    def inspect(self, worker_id: str) -> WorkerState:
        return self.runtime.inspect(worker_id)

    def ps(self, detail: bool = False) -> list[WorkerState]:
        """This node's workers; ``detail`` adds times, pid and the OOM flag (one inspect each)."""
        found = self.runtime.list_workers()
        if detail:
            full = []
            for w in found:
                try:
                    full.append(self.runtime.inspect(w.worker_id))
                except WorkerNotFound:
                    continue  # removed between the listing and the inspect
            found = full
        return sorted(found, key=lambda w: (w.topology_id, w.port, w.worker_id))

    def set_default_callback(self, on_exit: ExitCallback | None) -> None:
        """The callback for exits of workers launched without one (adopted ones, for instance)."""
        with self._lock:
            self._default_cb = on_exit

    def cleanup(self, worker_id: str) -> None:
        """Remove the container, the worker's directories and reservations; artifacts stay."""
        try:
            state: WorkerState | None = self.runtime.inspect(worker_id)
        except WorkerNotFound:
            state = None
        self.runtime.remove(worker_id)
        from ._layout import user_file, worker_root

        _remove_worker_files(worker_root(self.config, worker_id), user_file(self.config, worker_id))
        with self._lock:
            self._reservations.pop(worker_id, None)
            self._callbacks.pop(worker_id, None)
            self._exits.pop(worker_id, None)
            if state is not None:
                self._watched.discard(state.container_id)
                self._reported.discard(state.container_id)
        if state is not None:
            self._journal.forget(state.container_id)

    def recover(self) -> RecoveryReport:
        """Adopt this node's workers after a restart of berth; relaunch nothing."""
        report = RecoveryReport()
        with self._lock:
            self._adopt_all = True
        for w in self.runtime.list_workers():
            if w.state == "created":
                self.cleanup(w.worker_id)  # the container and the directories its launch made
                report.removed.append(w.worker_id)
            elif w.running:
                with self._lock:
                    self._watched.add(w.container_id)
                report.adopted.append(w.worker_id)
        # Report first, then subscribe: the watcher's own reconcile on subscribing catches any
        # worker that ends in between, and the journal keeps either path from reporting twice.
        report.reported = self._reconcile()
        self._ensure_watching()
        return report

    def wait(self, worker_id: str, timeout: float | None = None) -> ExitRecord:
        """Block until the worker's exit has been reported (launch it with a callback or recover)."""
        self._ensure_watching()
        with self._exit_cond:
            if not self._exit_cond.wait_for(lambda: worker_id in self._exits, timeout=timeout):
                raise EngineError("worker_id", f"worker {worker_id!r} did not exit within {timeout}s")
            return self._exits[worker_id]

    def watch(self, worker_id: str, on_exit: ExitCallback | None = None) -> None:
        """Watch an existing worker (e.g. one launched by another process)."""
        state = self.runtime.inspect(worker_id)
        with self._lock:
            self._watched.add(state.container_id)
            if on_exit is not None:
                self._callbacks[worker_id] = on_exit
        self._ensure_watching()
        self._reconcile()

    # -- the watcher --------------------------------------------------------------------------

    def _ensure_watching(self, timeout: float = 30.0) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_loop, name="berth-watcher", daemon=True)
                self._watcher.start()
        if not self._subscribed.wait(timeout):
            raise EngineError("engine", "could not subscribe to the engine's event stream")

    def _watch_loop(self) -> None:
        for item in self.runtime.exit_events():
            if self._closing:
                return
            if item is None:
                self._subscribed.set()
                try:
                    self._reconcile()
                except BerthError as exc:
                    log.warning("reconcile failed: %s", exc)
                continue
            self._deliver(item)

    def _reconcile(self) -> list[ExitRecord]:
        """Report every ended worker that is watched (or adopted) and not reported yet."""
        out = []
        for w in self.runtime.list_workers():
            if w.state not in ("exited", "dead"):
                continue
            with self._lock:
                wanted = (self._adopt_all or w.container_id in self._watched) and \
                    w.container_id not in self._reported
            if not wanted:
                continue
            rec = self.runtime.exit_record(w.worker_id)
            if rec is not None and self._deliver(rec):
                out.append(rec)
        return out

    def _deliver(self, rec: ExitRecord) -> bool:
        with self._lock:
            if rec.container_id in self._reported:
                return False
            if not (self._adopt_all or rec.container_id in self._watched):
                return False  # another berth process's worker: left for it (or for recover)
            self._reported.add(rec.container_id)
            self._journal.record(rec)
            callback = self._callbacks.pop(rec.worker_id, None) or self._default_cb
            self._exits[rec.worker_id] = rec
            self._exit_cond.notify_all()
        if callback is not None:
            try:
                callback(rec)
            except Exception:
                log.exception("exit callback for %s raised", rec.worker_id)
        return True

    def close(self) -> None:
        """Stop watching. Workers keep running: berth's restart must not touch them."""
        self._closing = True
        self.runtime.close()
        if self._watcher is not None:
            self._watcher.join(timeout=10)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

