"""An in-memory runtime for unit tests of the node and the supervisor: deterministic, no engine.

Workers never run anything; a test decides when and how each one ends (``finish``), whether a
stop is slow (``hold_stops``), whether the "engine" is down (``down``), and which operation fails
next (``fail_next``). Exit events flow through ``exit_events`` exactly as from a real runtime,
including the ``None`` that asks the caller to reconcile after a (re)subscription. Time comes
from an injectable clock, the same one a test gives the supervisor.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..._core.config import NodeConfig
from ..._core.plan import Plan
from ..._core.timefmt import iso_utc
from ..._exceptions import BerthError, EngineError, WorkerNotFound, WorkerNotRunning
from ..base import (
    ExecResult,
    ExitRecord,
    WorkerDescription,
    WorkerState,
    WorkerStatus,
)
from . import CAPABILITIES


@dataclass
class FakeWorker:
    plan: Plan
    container_id: str
    state: WorkerStatus = WorkerStatus.CREATED
    started_at: str | None = None
    finished_at: str | None = None
    exit: ExitRecord | None = None
    memory: int = 1 << 20
    log: bytearray = field(default_factory=bytearray)
    ignores_sigterm: bool = False
    on_term: int | None = None
    """The exit code of a worker that handles SIGTERM by exiting (None: SIGTERM's default action)."""
    main_stopped: bool = False
    """As if a process of the worker had ptrace-stopped its PID 1 (reported while it runs)."""


class Gate(threading.Event):
    """Set it to let a held operation go on; ``entered`` says the operation is waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()


class FakeRuntime:
    """Implements ``base.Runtime`` in memory. Thread-safe; one thread may iterate exits."""

    name = "fake"
    capabilities = CAPABILITIES

    def __init__(self, config: NodeConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.missing_images: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        """Every operation as (name, worker id), in order: what a test asserts on."""
        self.down = False
        """While True every call fails as an unreachable engine would."""
        self._lock = threading.Lock()
        self._workers: dict[str, FakeWorker] = {}
        self._ids = itertools.count(1)
        self._events: queue.Queue[ExitRecord | None] = queue.Queue()
        self._fail: dict[tuple[str, str | None], BerthError] = {}
        self._holds: dict[str, threading.Event] = {}
        self._create_holds: dict[str, Gate] = {}
        self._closed = False

    # -- what a test controls ---------------------------------------------------------------

    def fail_next(self, op: str, error: BerthError, worker_id: str | None = None) -> None:
        """Make the next ``op`` (for ``worker_id``, or for any worker) raise ``error`` once."""
        with self._lock:
            self._fail[(op, worker_id)] = error

    def hold_stops(self, worker_id: str) -> threading.Event:
        """Make ``stop`` of ``worker_id`` block until the returned event is set (a slow stop)."""
        gate = threading.Event()
        with self._lock:
            self._holds[worker_id] = gate
        return gate

    def hold_creates(self, worker_id: str) -> Gate:
        """Make ``create`` of ``worker_id`` block until the returned gate is set (a slow create);
        its ``entered`` is set once the create is waiting there."""
        gate = Gate()
        with self._lock:
            self._create_holds[worker_id] = gate
        return gate

    def finish(self, worker_id: str, exit_code: int = 0, signal: int | None = None, oom: bool = False,
               emit: bool = True, lost: bool = False) -> ExitRecord:
        """End a running worker as the test says; ``emit=False`` ends it without an event (as if
        it ended while nobody was subscribed: only a reconcile finds it); ``lost``: its monitor
        could not see how (one step, so that no reconcile sees it ended any other way)."""
        with self._lock:
            w = self._get(worker_id)
            if w.state != WorkerStatus.RUNNING:
                raise AssertionError(f"{worker_id} is {w.state}, not running")
            code = 128 + signal if signal is not None else exit_code
            w.finished_at = iso_utc(self.clock(), 9)
            w.state = WorkerStatus.EXITED
            rec = w.exit = ExitRecord(worker_id=worker_id, container_id=w.container_id, exit_code=code,
                                      signal=signal, oom_killed=oom and signal == 9, started_at=w.started_at,
                                      finished_at=w.finished_at, exact=True,
                                      oom_victim="worker" if oom and signal == 9 else ("child" if oom else None))
            if lost:
                rec = w.exit = ExitRecord(worker_id=worker_id, container_id=w.container_id, exit_code=None,
                                          signal=None, oom_killed=False, started_at=None, finished_at=None,
                                          status_lost=True)
        if emit:
            self._events.put(rec)
        return rec

    def resubscribe(self) -> None:
        """As if the event stream was cut and re-established: the consumer must reconcile."""
        self._events.put(None)

    def restarted(self) -> FakeRuntime:
        """A new runtime object on the same "engine": what a restarted berth connects to. The
        containers (and their states) are shared; subscriptions and injected failures are not."""
        other = FakeRuntime(self.config, self.clock)
        other._lock, other._workers, other._ids = self._lock, self._workers, self._ids
        other.missing_images = self.missing_images
        return other

    def write_log(self, worker_id: str, data: bytes) -> None:
        with self._lock:
            self._get(worker_id).log += data

    def worker(self, worker_id: str) -> FakeWorker:
        with self._lock:
            return self._get(worker_id)

    # -- internals ----------------------------------------------------------------------------

    def _get(self, worker_id: str) -> FakeWorker:
        try:
            return self._workers[worker_id]
        except KeyError:
            raise WorkerNotFound(worker_id) from None

    def _enter(self, op: str, worker_id: str = "") -> None:
        with self._lock:
            self.calls.append((op, worker_id))
            if self.down:
                raise EngineError("engine", f"{op}: cannot reach the container engine (fake: down)")
            err = self._fail.pop((op, worker_id), None) or self._fail.pop((op, None), None)
        if err is not None:
            raise err

    def _state(self, w: FakeWorker) -> WorkerState:
        plan = w.plan
        return WorkerState.from_labels(plan.label_map, container_id=w.container_id, image=plan.image, state=w.state,
                           exit_code=w.exit.exit_code if w.exit else None,
                           oom_killed=bool(w.exit and w.exit.oom_killed),
                           oom_victim=w.exit.oom_victim if w.exit else None, started_at=w.started_at,
                           finished_at=w.finished_at,
                           pid=4242 if w.state.running else None,
                           main_stopped=w.main_stopped and w.state.running)

    # -- the Runtime interface ---------------------------------------------------------------

    def image_present(self, image: str) -> bool:
        self._enter("image_present", image)
        return image not in self.missing_images

    def create(self, plan: Plan) -> str:
        self._enter("create", plan.worker_id)
        with self._lock:
            gate = self._create_holds.pop(plan.worker_id, None)
        if gate is not None:
            gate.entered.set()
            gate.wait()
        with self._lock:
            if plan.worker_id in self._workers:
                raise EngineError("engine", f"create container: the name {plan.worker_id!r} is in use")
            cid = f"fake{next(self._ids):06d}"
            self._workers[plan.worker_id] = FakeWorker(plan, cid)
        return cid

    def start(self, worker_id: str) -> None:
        self._enter("start", worker_id)
        with self._lock:
            w = self._get(worker_id)
            w.state, w.started_at = WorkerStatus.RUNNING, iso_utc(self.clock(), 9)

    def stop(self, worker_id: str, grace_s: float) -> None:
        self._enter("stop", worker_id)
        with self._lock:
            w = self._get(worker_id)
            gate = self._holds.get(worker_id)
        if gate is not None:
            gate.wait()
        if w.state == WorkerStatus.RUNNING and w.on_term is not None and not w.ignores_sigterm:
            self.finish(worker_id, w.on_term)
        elif w.state == WorkerStatus.RUNNING:
            self.finish(worker_id, signal=9 if w.ignores_sigterm else 15)

    def force_kill(self, worker_id: str) -> None:
        self._enter("force_kill", worker_id)
        if self.worker(worker_id).state == WorkerStatus.RUNNING:
            self.finish(worker_id, signal=9)

    def remove(self, worker_id: str) -> None:
        self._enter("remove", worker_id)
        with self._lock:
            self._workers.pop(worker_id, None)

    def inspect(self, worker_id: str) -> WorkerState:
        self._enter("inspect", worker_id)
        with self._lock:
            return self._state(self._get(worker_id))

    def describe(self, worker_id: str) -> WorkerDescription:
        self._enter("describe", worker_id)
        with self._lock:
            w = self._get(worker_id)
            plan, r = w.plan, w.plan.resources
            request = {"worker_id": plan.worker_id, "topology_id": plan.topology_id, "port": plan.port,
                       "user": plan.identity.user, "image": plan.image, "cpu_percent": r.cpu_percent,
                       "memory_mb": r.memory_mb, "pids_limit": r.pids_limit}
            state = self._state(w)
        return WorkerDescription(worker=state, request=request, pid=state.pid)

    def memory_usage(self, worker_id: str) -> int:
        self._enter("memory_usage", worker_id)
        with self._lock:
            w = self._get(worker_id)
            if not w.state.running:
                raise WorkerNotRunning(worker_id, w.state)
            return w.memory

    def exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        self._enter("exec", worker_id)
        with self._lock:
            w = self._get(worker_id)
            if not w.state.running:
                raise WorkerNotRunning(worker_id, w.state)
        return ExecResult(0, " ".join(argv).encode())

    def logs(self, worker_id: str, *, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        self._enter("logs", worker_id)
        with self._lock:
            data = bytes(self._get(worker_id).log)
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail else b""
        yield data

    def list_workers(self) -> list[WorkerState]:
        self._enter("list_workers")
        with self._lock:
            return [self._state(w) for w in self._workers.values()]

    def exit_events(self) -> Iterator[ExitRecord | None]:
        yield None
        while not self._closed:
            item = self._events.get()
            if self._closed:
                return
            yield item

    def exit_record(self, worker_id: str) -> ExitRecord | None:
        self._enter("exit_record", worker_id)
        with self._lock:
            return self._get(worker_id).exit

    def health(self) -> str:
        return "ok"

    def close(self) -> None:
        self._closed = True
        self._events.put(None)
