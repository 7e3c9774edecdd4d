"""The node: berth's ``ResourceIsolationInterface`` (launch, kill, watch, report) over one runtime.

Storm's names are kept where they are the domain's (``launch``, ``kill``, ``force_kill``,
``all_dead``, ``memory_usage``, ``cleanup``) so a Storm reader finds them. One watcher thread
consumes the runtime's exit stream for every worker; on each (re)connect it reconciles with a
listing, so an exit that happened while the stream was down is still found. Each exit is
journalled (``journal``) before its callback runs, which is how a restarted berth knows which
exits it has already reported. Directories are ``workdirs``' business (``stormdirs``' where Storm's
supervisor makes them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._core.config import NodeConfig
from .._core.hostfacts import HostFacts
from .._core.identity import Identity, resolve_identity
from .._core.limits import NodeCapacity, Usage, check_admission
from .._core.plan import Plan, build_plan
from .._core.spec import ID_PATTERN, WorkerSpec
from .._exceptions import BerthError, LaunchError, PolicyError, SpecError, WaitTimeout, WorkerNotFound
from .._runtimes.base import ExecResult, ExitRecord, Runtime, WorkerDescription, WorkerState, WorkerStatus
from .._runtimes.registry import check_config, make_runtime
from . import workdirs
from .admission import Admission
from .journal import ExitJournal
from .state import StateDir

log = logging.getLogger("berth.node")

ExitCallback = Callable[[ExitRecord], None]
STALL_CHECK_S = 1.0
"""How often ``wait`` looks whether the worker it waits for can still end by itself."""


@dataclass(frozen=True)
class Launched:
    """What a launch returns: enough to find the worker again and to explain it (not a handle:
    nothing is held; the worker is found again by its id)."""

    worker_id: str
    container_id: str
    plan: Plan


WorkerHandle = Launched
"""The name ``Launched`` had before: exported (``berth.WorkerHandle``), so kept for callers."""


@dataclass
class RecoveryReport:
    adopted: list[str] = field(default_factory=list)
    """Running workers now watched again."""
    reported: list[ExitRecord] = field(default_factory=list)
    """Workers that exited while berth was down, reported now with their real exit codes."""
    removed: list[str] = field(default_factory=list)
    """Half-made workers (created, never started) that were removed."""


class Node:
    """Launches, watches and reports the workers of one node."""

    def __init__(self, config: NodeConfig, runtime: Runtime | None = None,
                 on_exit: ExitCallback | None = None, host: HostFacts | None = None,
                 identities: Callable[[str], Identity] | None = None, dirs: workdirs.WorkerDirs | None = None) -> None:
        """``identities`` resolves a user name (default: the node's user database, with the
        node's min_uid and banned users); tests give made-up users this way. ``dirs``: who makes
        the workers' directories (default berth; ``StormDirs`` when Storm's supervisor does)."""
        self.config = config = check_config(config)  # the runtime's reserved paths are never a mount
        self.runtime = runtime if runtime is not None else make_runtime(config)
        self.host = host or HostFacts.probe()
        n = config.node
        self._identities = identities or (lambda user: resolve_identity(
            user, n.min_uid, n.banned_users, allowed_users=n.allowed_users, allowed_groups=n.allowed_groups))
        self.dirs: workdirs.WorkerDirs = dirs or workdirs.BerthDirs()
        self._default_cb = on_exit
        self._lock = threading.RLock()
        self._callbacks: dict[str, ExitCallback] = {}
        self._watched: set[str] = set()
        self._adopt_all = False
        self._journal = ExitJournal(config.state_dir)
        self._state = StateDir(config)
        self._reported: set[str] = self._journal.known()
        self._exits: dict[str, ExitRecord] = {}
        self._exit_cond = threading.Condition(self._lock)
        self._watcher: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._closing = False
        self._bound = False
        self._admission = Admission(config, self.host, self.runtime, self._state)

    # -- launch ------------------------------------------------------------------------------

    def plan(self, spec: WorkerSpec) -> Plan:
        """The plan a launch of ``spec`` would run, with every check a launch makes (a worker
        larger than the node's whole capacity included: ``PolicyError``)."""
        plan = build_plan(spec, self.config, self._identities(spec.user), self.host)
        check_admission(self.usage_of(plan), Usage(), self.capacity)
        return plan

    @property
    def capacity(self) -> NodeCapacity:
        """What the node's workers together may hold (``ConfigError`` for a capacity the machine
        cannot have)."""
        return self._admission.capacity

    def demand(self, spec: WorkerSpec) -> Usage:
        """What a launch of ``spec`` would take of the node's capacity."""
        return self.usage_of(self.plan(spec))

    def usage_of(self, plan: Plan) -> Usage:
        """What ``plan`` takes of the node's capacity (memory less Storm's margin, on a storm.yaml)."""
        return self._admission.takes(plan)

    def usage(self, listed: Sequence[WorkerState] | None = None, held: Collection[str] = (),
              launching: bool = True) -> Usage:
        """What the node's workers hold now (``admission.Admission.usage``)."""
        return self._admission.usage(listed, held, launching)

    def launch(self, spec: WorkerSpec, on_exit: ExitCallback | None = None,
               held: Collection[str] = ()) -> Launched:
        """Create the worker's directories, script and container, and start it.

        Either the worker runs, or a ``BerthError`` is raised and nothing the launch made is
        left behind (container, directories, files). Admission first: ``CapacityError`` (naming
        the field and the capacity) when, with what the node's workers hold (``held``: worker ids
        whose ended containers keep their places), it would take the node past its capacity.
        """
        plan = self.plan(spec)
        self.bind_state()
        with self._state.claim(plan.worker_id) as claim:  # one launch of an id at a time: threads and processes
            self._admission.admit(plan, claim, held)
            return self._launch(plan, on_exit)

    def _launch(self, plan: Plan, on_exit: ExitCallback | None) -> Launched:
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
        caps = self.runtime.capabilities
        try:
            if caps.host_dirs:  # else the runtime's workers run elsewhere and make their own
                self.dirs.prepare(plan, made)
            step = "create"
            container_id = self.runtime.create(plan)
            with self._lock:
                self._watched.add(container_id)
            if caps.cidfile:
                step = "cidfile"
                workdirs.write(Path(plan.cid_file), container_id.encode() + b"\n", made, mode=0o644)
            step = "start"
            self.runtime.start(plan.worker_id)
        except (BerthError, OSError) as exc:
            self._rollback(plan.worker_id, container_id, made)
            reason = exc.reason if isinstance(exc, BerthError) else f"{exc.strerror or exc}"
            raise LaunchError(step, reason) from exc
        return Launched(plan.worker_id, container_id, plan)

    def _rollback(self, worker_id: str, container_id: str | None, made: list[Path]) -> None:
        if container_id is not None:
            with contextlib.suppress(BerthError):
                self.runtime.remove(worker_id)
            with self._lock:
                self._watched.discard(container_id)
        with self._lock:
            self._callbacks.pop(worker_id, None)
        workdirs.rollback(made)

    # -- lifecycle ---------------------------------------------------------------------------

    def kill(self, worker_id: str, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``. The container stays until ``cleanup``."""
        self.runtime.stop(worker_id, grace_s)

    def force_kill(self, worker_id: str) -> None:
        self.runtime.force_kill(worker_id)

    def all_dead(self, worker_id: str) -> bool:
        """True when no process of the worker runs (Storm's name; looked up by exact id)."""
        try:
            return not self.runtime.inspect(worker_id).running
        except WorkerNotFound:
            return True

    def memory_usage(self, worker_id: str) -> int:
        return self.runtime.memory_usage(worker_id)

    def exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        """Run a command inside the worker's container, as the worker's user (Storm uses this
        to profile a worker: jstack, jmap)."""
        return self.runtime.exec(worker_id, argv)

    def logs(self, worker_id: str, *, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        """The worker's output in chunks (never all of it in memory)."""
        return self.runtime.logs(worker_id, tail=tail, follow=follow)

    def inspect(self, worker_id: str) -> WorkerState:
        return self.runtime.inspect(worker_id)

    def describe(self, worker_id: str) -> WorkerDescription:
        return self.runtime.describe(worker_id)

    def exit_record(self, worker_id: str) -> ExitRecord | None:
        """How an ended worker ended, from the runtime's own state (None while it runs)."""
        return self.runtime.exit_record(worker_id)

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

    def health(self) -> str:
        """"ok", or what is wrong with the runtime (``Runtime.health``; it may block a while)."""
        return self.runtime.health()

    def check_state(self) -> None:
        """At a service's start: berth's state dir is usable and apart from the workers'
        (``ConfigError`` on ``node.state_dir`` otherwise), and this node's (``bind_state``)."""
        self._state.check()
        self.bind_state()

    def bind_state(self) -> None:
        """Before the state dir is written: it holds this node's state, not another node's
        (``StateError`` naming both otherwise). Checked once per ``Node``."""
        if not self._bound:
            self._state.bind()
            self._bound = True

    def set_default_callback(self, on_exit: ExitCallback | None) -> None:
        """The callback for exits of workers launched without one (adopted ones, for instance)."""
        with self._lock:
            self._default_cb = on_exit

    def cleanup(self, worker_id: str) -> None:
        """Remove the container and the worker's directories; artifacts stay.

        The container goes first, so nothing of the worker runs any more; if its directories
        then cannot be removed, ``CleanupError`` says why (and a later cleanup or launch of the
        same id tries again). Refused while a launch of the id is under way, in any berth process.
        """
        if not ID_PATTERN.fullmatch(worker_id):
            raise SpecError("worker_id", f"{worker_id!r} is not a worker id")  # it becomes a path: never '..'
        with self._state.claim(worker_id, required=False):
            try:
                state: WorkerState | None = self.runtime.inspect(worker_id)
            except WorkerNotFound:
                state = None
            self.runtime.remove(worker_id)
            with self._lock:
                self._callbacks.pop(worker_id, None)
                self._exits.pop(worker_id, None)
                if state is not None:
                    self._watched.discard(state.container_id)
                    self._reported.discard(state.container_id)
            if state is not None:
                self._journal.forget(state.container_id)
            if self.runtime.capabilities.host_dirs:
                self.dirs.remove(self.config, worker_id)

    def recover(self) -> RecoveryReport:
        """Adopt this node's workers after a restart of berth; relaunch nothing."""
        self.bind_state()
        report = RecoveryReport()
        with self._lock:
            self._adopt_all = True
        for w in self.runtime.list_workers():
            if w.state == WorkerStatus.CREATED:
                try:
                    self.cleanup(w.worker_id)  # the container and the directories its launch made
                except PolicyError:
                    continue  # not half-made: another berth process is launching it right now
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
        """Block until the worker's exit has been reported (launch it with a callback or recover).

        Every ``STALL_CHECK_S`` the worker is looked at: one whose main process was stopped from
        inside (``main_stopped``) would never exit, so that is a ``WaitTimeout`` at once.
        """
        self._ensure_watching()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with self._exit_cond:
                if self._exit_cond.wait_for(lambda: worker_id in self._exits,
                                            timeout=STALL_CHECK_S if left is None else min(left, STALL_CHECK_S)):
                    return self._exits[worker_id]
            if left is not None and left <= STALL_CHECK_S:
                raise WaitTimeout("worker_id", f"worker {worker_id!r} did not exit within {timeout}s")
            try:
                stopped = self.runtime.inspect(worker_id).main_stopped
            except BerthError:
                stopped = False  # gone or unreachable: its exit (or the stream's reconnect) will tell
            if stopped:
                raise WaitTimeout("worker_id", f"worker {worker_id!r} cannot end by itself: its PID 1 was stopped "
                                  "from inside the worker (ptrace); its program may have ended; berth kill --force it")

    # -- the watcher --------------------------------------------------------------------------

    def _ensure_watching(self, timeout: float = 30.0) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_loop, name="berth-watcher", daemon=True)
                self._watcher.start()
        if not self._subscribed.wait(timeout):
            raise WaitTimeout("engine", "could not subscribe to the runtime's exit events")

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
            if w.state != WorkerStatus.EXITED:
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
        self._journal.record(rec)  # on the disk before anyone hears of it; the node's lock is not held meanwhile
        with self._lock:
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


