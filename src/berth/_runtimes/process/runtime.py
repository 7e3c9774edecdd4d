"""The process runtime: workers as plain child processes of this berth, for development only.

No isolation at all (no namespaces, no limits), which is why it refuses to start unless the
config names it, and its workers do not outlive the berth that started them. Exits are
watched through pidfds in the node's single watcher thread, so even here there is no thread
per worker; the status comes from ``Popen`` (the raw wait status), so it is exact.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..._core.config import NodeConfig
from ..._core.plan import Plan
from ..._core.timefmt import iso_utc
from ..._exceptions import EngineError, WorkerNotFound, WorkerNotRunning
from ..._linux.proc import rss_bytes
from ..base import (
    ExecResult,
    ExitRecord,
    WorkerDescription,
    WorkerState,
    WorkerStatus,
    code_from_returncode,
)
from ..logfile import read_log
from . import CAPABILITIES

_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class _Proc:
    plan: Plan
    container_id: str
    popen: subprocess.Popen[bytes] | None = None
    state: WorkerStatus = WorkerStatus.CREATED
    exit_code: int | None = None
    signal: int | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.plan.workdir, "berth-process.log")


class ProcessRuntime:
    name = "process"
    capabilities = CAPABILITIES

    def __init__(self, config: NodeConfig) -> None:
        if config.node.runtime != "process":
            raise EngineError("node.runtime", "the process runtime gives no isolation; set "
                              "node.runtime = \"process\" in the config to use it")
        self._procs: dict[str, _Proc] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False

    def _get(self, worker_id: str) -> _Proc:
        try:
            return self._procs[worker_id]
        except KeyError:
            raise WorkerNotFound(worker_id) from None

    def image_present(self, image: str) -> bool:
        return True

    def create(self, plan: Plan) -> str:
        with self._lock:
            proc = _Proc(plan, uuid.uuid4().hex)
            self._procs[plan.worker_id] = proc
        return proc.container_id

    def start(self, worker_id: str) -> None:
        p = self._get(worker_id)
        ident = p.plan.identity
        with open(p.log_path, "ab") as log:
            p.popen = subprocess.Popen(
                list(p.plan.argv), cwd=p.plan.workdir, env={"PATH": _PATH}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, user=ident.uid, group=ident.gid,
                extra_groups=list(ident.groups), start_new_session=True)
        p.state, p.started_at = WorkerStatus.RUNNING, iso_utc(digits=0)
        os.write(self._wake_w, b"x")

    def _signal(self, p: _Proc, sig: int) -> None:
        if p.popen is not None and p.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, sig)

    def stop(self, worker_id: str, grace_s: float) -> None:
        p = self._get(worker_id)
        self._signal(p, signal.SIGTERM)
        if p.popen is not None:
            try:
                p.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(p, signal.SIGKILL)

    def force_kill(self, worker_id: str) -> None:
        self._signal(self._get(worker_id), signal.SIGKILL)

    def remove(self, worker_id: str) -> None:
        p = self._procs.get(worker_id)
        if p is not None:
            self._signal(p, signal.SIGKILL)
            with self._lock:
                self._procs.pop(worker_id, None)

    def _state(self, p: _Proc) -> WorkerState:
        if p.popen is not None and p.state == WorkerStatus.RUNNING and p.popen.poll() is not None:
            self._finish(p)
        plan = p.plan
        return WorkerState.from_labels(plan.label_map, container_id=p.container_id, image="(process)",
                                       state=p.state, exit_code=p.exit_code, started_at=p.started_at,
                                       finished_at=p.finished_at,
                                       pid=p.popen.pid if p.popen and p.state == WorkerStatus.RUNNING else None)

    def _finish(self, p: _Proc) -> None:
        assert p.popen is not None
        p.exit_code, p.signal = code_from_returncode(p.popen.wait())
        p.state, p.finished_at = WorkerStatus.EXITED, p.finished_at or iso_utc(digits=0)

    def inspect(self, worker_id: str) -> WorkerState:
        return self._state(self._get(worker_id))

    def describe(self, worker_id: str) -> WorkerDescription:
        p = self._get(worker_id)
        state = self._state(p)
        plan, r = p.plan, p.plan.resources
        request = {"worker_id": plan.worker_id, "topology_id": plan.topology_id, "port": plan.port,
                   "user": plan.identity.user, "image": plan.image, "cpu_percent": r.cpu_percent,
                   "memory_mb": r.memory_mb, "pids_limit": r.pids_limit}
        return WorkerDescription(worker=state, request=request, pid=state.pid)

    def memory_usage(self, worker_id: str) -> int:
        st = self.inspect(worker_id)
        if st.pid is None:
            raise WorkerNotRunning(worker_id, st.state)
        return rss_bytes(st.pid)

    def exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        ident = self._get(worker_id).plan.identity
        out = subprocess.run(list(argv), capture_output=True, env={"PATH": _PATH}, user=ident.uid,
                             group=ident.gid, extra_groups=list(ident.groups), check=False,
                             cwd=self._get(worker_id).plan.workdir)
        return ExecResult(code_from_returncode(out.returncode)[0], out.stdout + out.stderr)

    def logs(self, worker_id: str, *, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        p = self._get(worker_id)
        return read_log(p.log_path, tail, follow, lambda: self._state(p).state == WorkerStatus.RUNNING)

    def list_workers(self) -> list[WorkerState]:
        with self._lock:
            procs = list(self._procs.values())
        return [self._state(p) for p in procs]

    def exit_record(self, worker_id: str) -> ExitRecord | None:
        p = self._get(worker_id)
        st = self._state(p)
        if st.exit_code is None:
            return None
        return ExitRecord(st.worker_id, st.container_id, st.exit_code, p.signal, False, st.started_at,
                          st.finished_at, exact=True)

    def exit_events(self) -> Iterator[ExitRecord | None]:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        fds: dict[int, str] = {}
        yield None
        while not self._closed:
            with self._lock:
                procs = list(self._procs.items())
            for wid, p in procs:
                if p.state == WorkerStatus.RUNNING and p.popen is not None and wid not in fds.values():
                    fd = os.pidfd_open(p.popen.pid)
                    fds[fd] = wid
                    sel.register(fd, selectors.EVENT_READ)
            for key, _ in sel.select():
                if key.fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                wid = fds.pop(int(key.fd))
                sel.unregister(key.fd)
                os.close(int(key.fd))
                done = self._procs.get(wid)
                if done is not None:
                    self._finish(done)
                    rec = self.exit_record(wid)
                    if rec is not None:
                        yield rec
        sel.close()

    def health(self) -> str:
        return "ok"

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
