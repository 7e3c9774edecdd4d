"""The Docker runtime: workers as containers of a Docker engine, through the Engine API.

The engine is the source of truth. Every container carries berth's labels, and a worker is
always looked up by the exact value of its ``berth.worker`` label on this node (never by a
name prefix, Storm's ``docker ps --filter=name=`` mistake). Exits come from one subscription
to the engine's event stream, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import docker
import requests
from docker import errors as derr
from docker.constants import DEFAULT_UNIX_SOCKET

from ..._core.config import NodeConfig
from ..._core.hostfacts import parse_cpu_list
from ..._core.labels import LABEL_NODE, LABEL_WORKER, WorkerLabels
from ..._core.plan import Plan
from ..._core.timefmt import iso_utc_ns
from ..._exceptions import EngineError, WorkerNotFound, WorkerNotRunning
from ..._linux import cgroup as _cgroup
from ..._linux.mountinfo import read_only_all_the_way_down
from ..._linux.proc import is_stopped
from ..base import (
    ExecResult,
    ExitRecord,
    WorkerDescription,
    WorkerState,
    WorkerStatus,
    split_status,
)
from ..seccomp import Filters
from . import CAPABILITIES
from .inspect import log_limits, oom_victim
from .render import engine_create_body, read_seccomp

log = logging.getLogger("berth.docker")

_EXITED = re.compile(r"Exited \((-?\d+)\)")
_STREAM_ERRORS = (derr.DockerException, requests.exceptions.RequestException, OSError, ValueError)


def _since(time_nano: int) -> str:
    return f"{time_nano // 1_000_000_000}.{time_nano % 1_000_000_000:09d}"


def _status(value: str | None) -> WorkerStatus:
    """The engine's state words as berth's: ``dead`` (removal failed half-way) has ended too."""
    if value in ("exited", "dead"):
        return WorkerStatus.EXITED
    if value in ("running", "restarting", "removing"):
        return WorkerStatus.RUNNING
    if value == "paused":
        return WorkerStatus.PAUSED
    if value == "created":
        return WorkerStatus.CREATED
    return WorkerStatus.UNKNOWN


def request_from_inspect(data: dict[str, Any]) -> dict[str, Any]:
    """The request fields a container stands for: ids and user from its labels, the image, and
    the resources from what the engine applied (HostConfig), rounded up to the request's units."""
    labels = (data.get("Config") or {}).get("Labels") or {}
    host = data.get("HostConfig") or {}
    fields: dict[str, Any] = WorkerLabels.decode(labels).request()
    image = (data.get("Config") or {}).get("Image")
    if image:
        fields["image"] = image
    mib = 1024 * 1024
    if host.get("NanoCpus"):
        fields["cpu_percent"] = -(-int(host["NanoCpus"]) // 10_000_000)
    if host.get("Memory"):
        fields["memory_mb"] = -(-int(host["Memory"]) // mib)
    if host.get("PidsLimit") and int(host["PidsLimit"]) > 0:
        fields["pids_limit"] = int(host["PidsLimit"])
    if host.get("CpusetCpus"):
        fields["cores"] = tuple(sorted(parse_cpu_list(host["CpusetCpus"])))
    mems = parse_cpu_list(host.get("CpusetMems") or "")
    if len(mems) == 1:
        fields["numa_node"] = next(iter(mems))
    return fields


def _timestamp(value: str | None) -> str | None:
    if not value or value.startswith("0001-01-01"):
        return None
    return value


class DockerRuntime:
    """Runs plans as Docker containers. Thread-safe for calls; one thread may iterate exits."""

    name = "docker"
    capabilities = CAPABILITIES

    def __init__(self, config: NodeConfig, base_url: str | None = None) -> None:
        self._config = config
        self._node = config.node.name
        self._url = (base_url or config.node.docker_host or os.environ.get("DOCKER_HOST")
                     or DEFAULT_UNIX_SOCKET)
        self._api = self._client()
        self._closed = threading.Event()
        self._stream: Any = None
        self._cids: dict[str, str] = {}
        self._memfiles: dict[str, str] = {}
        self._started: dict[str, str] = {}
        """Start times from the event stream, so an exit needs no inspect round trip."""
        self._oom: dict[str, int | None] = {}
        """Container ids with an ``oom`` event, and the cgroup's oom_kill count read then."""
        self._seccomp = Filters.of(config)

    def _client(self) -> docker.APIClient:
        try:
            return docker.APIClient(base_url=self._url, timeout=60, max_pool_size=128, version="auto")
        except derr.DockerException as exc:
            raise EngineError("engine", f"cannot reach the container engine at {self._url}: {exc}") from exc

    # -- lookups --------------------------------------------------------------------------

    def _filters(self, worker_id: str | None = None) -> dict[str, list[str]]:
        labels = [f"{LABEL_NODE}={self._node}"]
        if worker_id is not None:
            labels.append(f"{LABEL_WORKER}={worker_id}")
        return {"label": labels}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except derr.NotFound:
            raise
        except derr.APIError as exc:
            raise EngineError("engine", f"{what}: {exc.explanation or exc}") from exc
        except (derr.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineError("engine", f"{what}: cannot reach the container engine at {self._url}: "
                              f"{exc}") from exc

    def _container_id(self, worker_id: str) -> str:
        cached = self._cids.get(worker_id)
        if cached is not None:
            return cached
        found = self._call("list containers", self._api.containers, all=True,
                           filters=self._filters(worker_id))
        if not found:
            raise WorkerNotFound(worker_id)
        cid = self._cids[worker_id] = str(found[0]["Id"])
        return cid

    def _on_container(self, worker_id: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(container_id, …)``. The id is cached (a lookup by label costs a request); a
        cached id whose container is gone is looked up again once, since container names are
        unique in an engine and a worker's new container means its old one was removed."""
        for attempt in (0, 1):
            cid = self._container_id(worker_id)
            try:
                return self._call(what, fn, cid, *args, **kwargs)
            except derr.NotFound:
                self._cids.pop(worker_id, None)
                self._memfiles.pop(cid, None)
                if attempt:
                    raise WorkerNotFound(worker_id) from None
        raise AssertionError("unreachable")

    def _inspect_raw(self, worker_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._on_container(worker_id, "inspect", self._api.inspect_container)
        return data

    @staticmethod
    def _state(data: dict[str, Any]) -> WorkerState:
        labels = data["Config"].get("Labels") or {}
        st = data["State"]
        status = _status(st.get("Status"))
        ended = status == WorkerStatus.EXITED
        victim = oom_victim(bool(st.get("OOMKilled")), st.get("ExitCode")) if ended else None
        return WorkerState.from_labels(
            labels,
            container_id=data["Id"],
            image=data["Config"].get("Image", ""),
            state=status,
            exit_code=st.get("ExitCode") if ended else None,
            oom_killed=victim == "worker",
            oom_victim=victim,
            started_at=_timestamp(st.get("StartedAt")),
            finished_at=_timestamp(st.get("FinishedAt")) if ended else None,
            pid=st.get("Pid") or None,
            main_stopped=status == WorkerStatus.RUNNING and bool(st.get("Pid")) and is_stopped(st["Pid"]),
        )

    @staticmethod
    def _state_from_list(c: dict[str, Any]) -> WorkerState:
        labels = c.get("Labels") or {}
        status = _status(c.get("State"))
        m = _EXITED.match(c.get("Status") or "")
        return WorkerState.from_labels(
            labels, container_id=c["Id"], image=c.get("Image", ""), state=status,
            exit_code=int(m.group(1)) if m and status == WorkerStatus.EXITED else None)

    # -- the Runtime interface ------------------------------------------------------------

    def image_present(self, image: str) -> bool:
        try:
            self._call("inspect image", self._api.inspect_image, image)
        except derr.NotFound:
            return False
        return True

    def create(self, plan: Plan) -> str:
        body = engine_create_body(plan, seccomp_json=read_seccomp(plan, self._seccomp))  # never the engine's default
        # The engine makes a read-only bind read-only at the top only; see read_only_all_the_way_down.
        body["HostConfig"]["Mounts"] = read_only_all_the_way_down(body["HostConfig"]["Mounts"])
        try:
            out = self._call("create container", self._api.create_container_from_config, body,
                             name=plan.worker_id)
        except derr.NotFound as exc:
            raise EngineError("image", f"{plan.image}: {exc.explanation or exc}") from exc
        cid = self._cids[plan.worker_id] = str(out["Id"])
        return cid

    def start(self, worker_id: str) -> None:
        self._on_container(worker_id, "start container", self._api.start)

    def stop(self, worker_id: str, grace_s: float) -> None:
        self._on_container(worker_id, "stop container", self._api.stop, timeout=max(0, math.ceil(grace_s)))

    def force_kill(self, worker_id: str) -> None:
        try:
            self._on_container(worker_id, "kill", self._api.kill, signal="SIGKILL")
        except EngineError as exc:
            cause = exc.__cause__
            if isinstance(cause, derr.APIError) and cause.status_code == 409:
                return  # 409 Conflict: the container is not running, which is what was asked
            raise

    def remove(self, worker_id: str) -> None:
        with contextlib.suppress(WorkerNotFound):
            self._on_container(worker_id, "remove container", self._api.remove_container, force=True)
        cid = self._cids.pop(worker_id, None)
        if cid is not None:
            self._memfiles.pop(cid, None)

    def inspect(self, worker_id: str) -> WorkerState:
        return self._state(self._inspect_raw(worker_id))

    def describe(self, worker_id: str) -> WorkerDescription:
        data = self._inspect_raw(worker_id)
        state = self._state(data)
        return WorkerDescription(worker=state, request=request_from_inspect(data),
                                 pid=state.pid if state.running else None,
                                 logs=log_limits((data.get("HostConfig") or {}).get("LogConfig")))

    def memory_usage(self, worker_id: str) -> int:
        """One file read once the worker's cgroup file is known (found from its pid, then kept):
        microseconds, where the engine's stats call takes about a second."""
        cid = self._cids.get(worker_id)
        path = self._memfiles.get(cid) if cid else None
        if path is not None:
            try:
                return _cgroup.read_int(path)
            except (OSError, ValueError):
                self._memfiles.pop(cid or "", None)  # the container ended or was replaced: resolve again
        state = self.inspect(worker_id)
        if not state.running or not state.pid:
            raise WorkerNotRunning(worker_id, state.state)
        try:
            path = _cgroup.memory_file(state.pid)
            value = _cgroup.read_int(path)
        except (OSError, ValueError) as exc:
            raise EngineError("memory", f"cannot read the cgroup of {worker_id!r}: {exc}") from exc
        self._memfiles[state.container_id] = path
        return value

    def exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        data = self._inspect_raw(worker_id)
        user = data["Config"].get("User") or None
        if user in (None, "", "0", "root", "0:0"):
            raise EngineError("worker_id", f"worker {worker_id!r} has no non-root user to exec as")
        ex = self._call("exec", self._api.exec_create, data["Id"], list(argv), user=user,
                        workdir=data["Config"].get("WorkingDir") or None)
        output = self._call("exec", self._api.exec_start, ex["Id"])
        code = self._call("exec", self._api.exec_inspect, ex["Id"]).get("ExitCode")
        return ExecResult(exit_code=int(code if code is not None else -1), output=bytes(output or b""))

    def logs(self, worker_id: str, *, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        stream = self._on_container(worker_id, "logs", self._api.logs, stdout=True, stderr=True, stream=True,
                                    follow=follow, tail="all" if tail is None else tail)
        try:
            for chunk in stream:
                yield bytes(chunk)
        except (derr.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineError("engine", f"logs: the stream was cut: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def list_workers(self) -> list[WorkerState]:
        found = self._call("list containers", self._api.containers, all=True, filters=self._filters())
        return [self._state_from_list(c) for c in found]

    def exit_record(self, worker_id: str) -> ExitRecord | None:
        return self._record_from_state(self.inspect(worker_id))

    def _record_from_state(self, st: WorkerState) -> ExitRecord | None:
        if st.state != WorkerStatus.EXITED or st.exit_code is None:
            return None
        code, sig = split_status(st.exit_code)
        return ExitRecord(worker_id=st.worker_id, container_id=st.container_id, exit_code=code, signal=sig,
                          oom_killed=st.oom_killed, started_at=st.started_at, finished_at=st.finished_at,
                          oom_victim=st.oom_victim)

    def _on_oom(self, cid: str) -> None:
        count = None
        try:
            data = self._api.inspect_container(cid)
            pid = data["State"].get("Pid")
            if pid:
                count = _cgroup.oom_kills(pid)
        except (derr.DockerException, OSError, ValueError):
            pass
        self._oom[cid] = count

    def _record_from_die(self, ev: dict[str, Any]) -> ExitRecord:
        cid = ev["id"]
        attrs = ev.get("Actor", {}).get("Attributes", {})
        code, sig = split_status(int(attrs.get("exitCode", "-1")))
        oom_flag = cid in self._oom
        started = self._started.pop(cid, None)
        finished = iso_utc_ns(int(ev["timeNano"])) if "timeNano" in ev else None
        self._memfiles.pop(cid, None)
        if started is None or finished is None:
            # Started before we subscribed: ask the engine (an inspect waits ~10 ms for the
            # engine to finish tearing the container down, so it is not on the usual path).
            try:
                data = self._api.inspect_container(cid)
                started = _timestamp(data["State"].get("StartedAt"))
                finished = finished or _timestamp(data["State"].get("FinishedAt"))
                oom_flag = oom_flag or bool(data["State"].get("OOMKilled"))
            except (derr.DockerException, requests.exceptions.RequestException):
                pass  # removed already: the event carries what we need
        counted = self._oom.pop(cid, None)
        victim = oom_victim(oom_flag or bool(counted), code)
        return ExitRecord(worker_id=WorkerLabels.decode(attrs).worker_id, container_id=cid, exit_code=code, signal=sig,
                          oom_killed=victim == "worker", started_at=started, finished_at=finished,
                          oom_victim=victim)

    def exit_events(self) -> Iterator[ExitRecord | None]:
        since: str | None = None
        delay = 0.1
        events_api = self._client()
        while not self._closed.is_set():
            try:
                stream = events_api.events(decode=True, since=since, filters={  # type: ignore[call-overload]
                    "type": ["container"], "label": [f"{LABEL_NODE}={self._node}"], "event": ["start", "die", "oom"]})
            except _STREAM_ERRORS as exc:
                log.warning("event stream: cannot connect (%s); retrying in %.1fs", exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._stream = stream
            delay = 0.1
            yield None
            try:
                for ev in stream:
                    if "timeNano" in ev:
                        since = _since(int(ev["timeNano"]))
                    action = ev.get("Action") or ev.get("status")
                    if action == "start" and "timeNano" in ev:
                        self._started[ev["id"]] = iso_utc_ns(int(ev["timeNano"]))
                    elif action == "oom":
                        self._on_oom(ev["id"])
                    elif action == "die":
                        yield self._record_from_die(ev)
            except _STREAM_ERRORS as exc:
                if not self._closed.is_set():
                    log.warning("event stream cut (%s); reconnecting", exc)
            finally:
                self._stream = None
            if not self._closed.is_set():
                self._closed.wait(delay)

    def health(self) -> str:
        try:
            self.list_workers()
        except EngineError:
            return "unreachable"
        return "ok"

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
