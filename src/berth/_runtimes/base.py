"""The one small interface every runtime implements, and the runtime-neutral values it hands back.

A runtime knows how to run a plan and how to observe what it runs; it keeps no memory of its
own that matters: the engine (or the runc monitor) is the source of truth, found again after a
restart. Callers see only these values: a status enum, the request digest as a field, exit
records that say how exact they are, and ``describe`` for what the audit needs. Nothing here
is a Docker state string or a Docker JSON document.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .._core.labels import WorkerLabels
from .._core.plan import LogLimits, Plan


class WorkerStatus(StrEnum):
    """Where a worker's container is in its life, the same words for every runtime."""

    CREATED = "created"
    """Made, never started: a launch that did not finish (``recover`` removes it)."""
    RUNNING = "running"
    PAUSED = "paused"
    """Frozen (cgroup freezer); still counts as running."""
    EXITED = "exited"
    MISSING = "missing"
    """Known to the runtime, but its process is gone without a status (e.g. its monitor died)."""
    UNKNOWN = "unknown"

    @property
    def running(self) -> bool:
        return self in (WorkerStatus.RUNNING, WorkerStatus.PAUSED)


@dataclass(frozen=True)
class WorkerState:
    """What the runtime reports about one worker's container right now."""

    worker_id: str
    container_id: str
    topology_id: str
    port: int
    user: str
    image: str
    state: WorkerStatus
    spec_digest: str | None = None
    """The digest of the request the container was made from (``spec_digest``): a changed
    assignment is recognised by comparing it, whoever launched the container."""
    exit_code: int | None = None
    oom_killed: bool = False
    """The worker's main process was killed by the OOM killer (as ``ExitRecord.oom_killed``)."""
    oom_victim: str | None = None
    """``"worker"`` or ``"child"`` when the OOM killer took a process of the worker's (as in
    ``ExitRecord``); None when it took none, or while the worker runs."""
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    main_stopped: bool = False
    """The worker's main process (PID 1 of its container) is stopped, as a process of the worker
    can do to it with ptrace: the runtime still says running, but the worker cannot end by itself
    any more, whatever its program did. Only runtimes that see the process can tell."""

    @property
    def running(self) -> bool:
        return self.state.running

    @property
    def decoded(self) -> WorkerLabels:
        """berth's labels on the container, decoded (``_core.labels``)."""
        return WorkerLabels.decode(self.labels)

    @classmethod
    def from_labels(cls, labels: Mapping[str, str], **fields: Any) -> WorkerState:
        """A state whose ids, user and digest come from berth's labels (``fields`` win), decoded by
        the one decoder every runtime uses."""
        d = WorkerLabels.decode(labels)
        known = {"worker_id": d.worker_id, "topology_id": d.topology_id, "port": d.port, "user": d.user,
                 "spec_digest": d.spec_digest, "labels": dict(labels)}
        return cls(**{**known, **fields})


@dataclass(frozen=True)
class ExitRecord:
    """How one worker ended.

    ``exit_code`` follows the shell convention (128+N for death by signal N). Where the runtime
    saw the raw wait status (``exact``), ``signal`` is the signal that killed the worker and a
    worker that *exited* with 137 has ``signal`` None; elsewhere ``signal`` is inferred from the
    code. ``status_lost`` means nobody could see the status: ``exit_code`` is then None, never a
    made-up value.
    """

    worker_id: str
    container_id: str
    exit_code: int | None
    signal: int | None
    oom_killed: bool
    started_at: str | None
    finished_at: str | None
    exact: bool = False
    core_dumped: bool = False
    oom_victim: str | None = None
    """Whom the OOM killer took when the cgroup had an OOM kill: ``"worker"`` (its main process,
    then ``oom_killed`` is True) or ``"child"`` (another process; the worker may have gone on)."""
    status_lost: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExitRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal)

    @property
    def how(self) -> str:
        """One phrase for people: ``exit code 3``, ``killed by SIGKILL (out of memory)``…"""
        if self.status_lost:
            return "status lost (its monitor was gone when it ended)"
        oom = " (out of memory)" if self.oom_killed else ""
        if self.signal is not None:
            inferred = "" if self.exact else f" (exit code {self.exit_code})"
            core = ", core dumped" if self.core_dumped else ""
            return f"killed by {self.signal_name}{core}{oom}{inferred}"
        return f"exit code {self.exit_code}{oom}"

    def brief(self) -> str:
        """The same in a column (``ps``): "exited 137" and "killed by SIGKILL" stay different
        words where the runtime saw the raw status; elsewhere the code is shown with the signal it
        may stand for."""
        if self.status_lost:
            return "status lost"
        if self.signal is not None and self.exact:
            text = f"killed by {self.signal_name}" + (", core dumped" if self.core_dumped else "")
        elif self.signal is not None:
            text = f"exit code {self.exit_code} ({self.signal_name}?)"
        else:
            text = f"exited {self.exit_code}"
        if self.oom_killed:
            return text + ", out of memory"
        return text + (", a child out of memory" if self.oom_victim == "child" else "")


def signal_name(sig: int | None) -> str | None:
    if sig is None:
        return None
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def split_status(code: int) -> tuple[int, int | None]:
    """Engines report death by signal N as 128+N; recover N so callers need not guess."""
    if 128 < code <= 128 + 64:
        return code, code - 128
    return code, None


def code_from_returncode(returncode: int) -> tuple[int, int | None]:
    """A ``Popen`` return code (``-N`` for death by signal N) as (shell-convention code, signal)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes


@dataclass(frozen=True)
class WorkerDescription:
    """What the audit needs about a worker, from any runtime.

    ``request`` holds the request fields the container stands for *as the runtime applied
    them* (ids and user from its labels, image, cpu_percent, memory_mb, pids_limit, cores,
    numa_node from its configuration), so the audit can re-plan it and compare.
    """

    worker: WorkerState
    request: Mapping[str, Any]
    pid: int | None
    logs: LogLimits | None = None
    """How much of the worker's output the runtime keeps (files of a size), as it was told;
    None when it keeps it without a bound it can state."""


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can promise, declared (never probed at run time)."""

    isolated: bool
    """Namespaces, cgroup limits, capabilities and seccomp: the audit applies."""
    exact_status: bool
    """Exit records carry the raw wait status (137 and SIGKILL are told apart)."""
    survives_restart: bool
    """Workers outlive berth; a new berth finds them again (``list_workers``)."""
    oom_reported: bool
    """OOM kills are reported as such."""
    host_dirs: bool = True
    """The worker's directories are on this host: the node makes them (and removes them) and the
    runtime mounts them. False for a runtime whose workers run elsewhere and make their own."""
    cidfile: bool = True
    """The node writes the container's id to ``<worker root>/container.cid`` (Storm's layout)."""
    runs_programs: bool = True
    """The worker's command really runs: its output, memory and ``exec`` are a program's (False:
    the in-memory fake, whose workers end when a test says)."""
    starters: tuple[str, ...] = ()
    """Name prefixes of the runtime's own short-lived processes that run, unboxed, under the
    node's cgroup parent while a container starts (runc's ``runc:[2:INIT]``): the audit of the
    parent does not count them as strangers."""


class Runtime(Protocol):
    """What the node needs from a way of running workers. Every call takes a worker id."""

    name: str
    capabilities: Capabilities

    def image_present(self, image: str) -> bool: ...

    def create(self, plan: Plan) -> str:
        """Create (not start) the worker's container; returns its id."""
        ...

    def start(self, worker_id: str) -> None: ...

    def stop(self, worker_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL once the grace period is over."""
        ...

    def force_kill(self, worker_id: str) -> None: ...

    def remove(self, worker_id: str) -> None:
        """Remove the container, running or not; a missing one is not an error."""
        ...

    def inspect(self, worker_id: str) -> WorkerState:
        """Raises WorkerNotFound when there is no such worker."""
        ...

    def describe(self, worker_id: str) -> WorkerDescription:
        """The worker's state, the request it stands for and its main pid (for the audit)."""
        ...

    def memory_usage(self, worker_id: str) -> int: ...

    def exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        """Run argv inside the worker's container, as the worker's user."""
        ...

    def logs(self, worker_id: str, *, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        """The worker's output in chunks, never all of it in memory; ``tail`` lines from the end;
        ``follow`` keeps going until the worker ends."""
        ...

    def list_workers(self) -> list[WorkerState]:
        """Every worker of this node the runtime knows, in any state, from one cheap listing:
        state, labels, digest and exit code are filled in; times, pid and the OOM flag may not be."""
        ...

    def exit_events(self) -> Iterator[ExitRecord | None]:
        """Exit records as they happen, forever, until ``close``.

        Yields ``None`` after each (re)connection, once the runtime is subscribed: the moment a
        caller must reconcile with ``list_workers`` so that nothing that ended while the stream
        was down is lost.
        """
        ...

    def exit_record(self, worker_id: str) -> ExitRecord | None:
        """The exit of a worker that has ended, built from the runtime's own state."""
        ...

    def health(self) -> str:
        """"ok", or what is wrong with what runs the workers ("unreachable", "shim unresponsive"):
        asked with a short bound where the runtime has one. It may block; callers that must not
        ask it from a thread of their own (``_service.probe``)."""
        ...

    def close(self) -> None: ...
