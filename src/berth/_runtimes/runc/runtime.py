"""The runc runtime: workers as runc containers, no daemon, one monitor per node (``berth-shim``).

berth writes each worker's bundle over its own root (``runcbundle``); the shim starts, reaps and
reports it. The worker's files are the source of truth: ``meta.json`` says what it is,
``started.json`` and ``exit.json`` (written by the shim) where it is in its life, so a restarted
berth finds everything again without asking anyone. The status is exact: the shim is the
container's parent and sees the raw wait status (exit 137 and death by SIGKILL differ), and the
cgroup's OOM-kill count read before the cgroup goes. Containers started by hand in the same runc
root with berth's annotations are listed too (from ``runc list``), so the audit can judge them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from ..._core.config import NodeConfig
from ..._core.labels import WorkerLabels
from ..._core.plan import LogLimits, Plan
from ..._exceptions import BerthError, EngineError, WaitTimeout, WorkerNotFound, WorkerNotRunning
from ..._linux import cgroup as _cgroup
from ..._linux.mountinfo import read_mountinfo
from ..base import ExecResult, ExitRecord, WorkerDescription, WorkerState, WorkerStatus
from ..logfile import read_logs
from ..seccomp import Filters
from . import CAPABILITIES
from . import bundle as bundles
from .config import RuncSection
from .oci import oci_config
from .shim.files import now_iso, proc_state, start_time
from .shim.logs import rotated
from .shimclient import ShimClient

log = logging.getLogger("berth.runc")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HEALTH_TIMEOUT_S = 2.0
SHIM_QUIET_S = 10.0
"""After the shim failed to answer within ``HEALTH_TIMEOUT_S``, how long berth reads the workers'
files alone (a stopped shim must not make every `ps` wait on it again)."""
_UNANSWERED: dict[str, Any] = {}
_BERTH_CID = re.compile(r"[0-9a-f]{32}")
"""The runc ids berth gives its containers (``uuid4().hex``)."""
_RUNC_STATUS = {"created": WorkerStatus.CREATED, "running": WorkerStatus.RUNNING, "paused": WorkerStatus.PAUSED,
                "stopped": WorkerStatus.EXITED}


def find_runc(binary: str) -> str:
    found = binary if binary.startswith("/") else shutil.which(binary, path=_PATH + ":" + os.environ.get("PATH", ""))
    if not found or not os.access(found, os.X_OK):
        raise EngineError("runc.binary", f"runc not found ({binary}); install it (Debian: apt-get install runc)")
    return found


def record_from_exit(data: dict[str, Any]) -> ExitRecord:
    """An exit file as an ExitRecord: exact unless the shim could not see the status."""
    lost = bool(data.get("status_lost"))
    sig = data.get("signal")
    ooms = data.get("oom_kills") or 0
    victim = None if not ooms else ("worker" if sig == 9 else "child")
    return ExitRecord(worker_id=str(data.get("worker", "")), container_id=str(data["id"]),
                      exit_code=None if lost else data.get("exit_code"), signal=None if lost else sig,
                      oom_killed=bool(ooms) and sig == 9, started_at=data.get("started_at"),
                      finished_at=data.get("finished_at"), exact=not lost, core_dumped=bool(data.get("core_dumped")),
                      oom_victim=victim, status_lost=lost)


def _log_limits(meta: dict[str, Any]) -> LogLimits:
    file_mb, files = meta.get("logs") or (LogLimits().file_mb, LogLimits().files)
    return LogLimits(int(file_mb), int(files))


class RuncRuntime:
    name = "runc"
    capabilities = CAPABILITIES

    def __init__(self, config: NodeConfig, section: RuncSection | None = None, name: str = "runc") -> None:
        """``section`` and ``name``: another OCI runtime with runc's command line (crun, youki) runs
        through this class with its own table and its own state directory (``<state_dir>/<name>``)."""
        self.name = name
        self._config = config
        self._node = config.node.name
        self._section = section or RuncSection.of(config)
        self._base = config.runtime_dir(name)
        self._workers = os.path.join(self._base, "workers")
        self._root = self._section.root or os.path.join(self._base, "root")
        self._runc: str | None = None
        self._shim: ShimClient | None = None
        self._filters = Filters(self._section.default_seccomp, self._section.seccomp_compat_arches)
        self._memfiles: dict[str, str] = {}
        self._closed = threading.Event()
        self._shim_quiet_until = 0.0

    @property
    def runc(self) -> str:
        if self._runc is None:
            self._runc = find_runc(self._section.binary)
        return self._runc

    @property
    def shim(self) -> ShimClient:
        if self._shim is None:
            self._shim = ShimClient(self._base, self.runc, self._root)
        return self._shim

    def _wdir(self, worker_id: str) -> str:
        if not worker_id or "/" in worker_id or worker_id in (".", ".."):
            raise WorkerNotFound(worker_id)
        return os.path.join(self._workers, worker_id)

    def _meta(self, worker_id: str) -> dict[str, Any]:
        meta = _read_meta(self._wdir(worker_id))
        if meta is None:
            raise WorkerNotFound(worker_id)
        return meta

    # -- images and bundles --------------------------------------------------------------------

    def image_dir(self, image: str) -> str | None:
        """The read-only root filesystem directory of ``image`` (``RuncSection.image_path``), if it is one."""
        path = self._section.image_path(image)
        return path if path is not None and os.path.isdir(path) else None

    def image_present(self, image: str) -> bool:
        return self.image_dir(image) is not None

    def create(self, plan: Plan) -> str:
        image = self.image_dir(plan.image)
        if image is None:
            raise EngineError("image", f"{plan.image}: no root filesystem directory for it (runc.images, "
                              "runc.image_root)")
        seccomp = self._filters.oci(plan.security.seccomp_profile)  # a runc worker never runs without one
        wdir = self._wdir(plan.worker_id)
        os.makedirs(self._workers, mode=0o700, exist_ok=True)
        bundles.remove_worker_dir(wdir)  # the leftovers of a worker whose container is gone (checked by the node)
        cid = uuid.uuid4().hex
        bundle, rootfs = os.path.join(wdir, "bundle"), os.path.join(wdir, "bundle", "rootfs")
        try:
            os.mkdir(wdir, 0o700)
            for d in (os.path.join(wdir, "upper"), os.path.join(wdir, "work"), bundle, rootfs):
                os.mkdir(d)
                os.chmod(d, 0o755)  # whatever the umask of the berth process (serve's is strict)
            top = os.stat(image)  # the root directory the worker sees is the upper one: make it the image's
            os.chown(os.path.join(wdir, "upper"), top.st_uid, top.st_gid)
            os.chmod(os.path.join(wdir, "upper"), top.st_mode & 0o7777)
            bundles.mount_overlay(image, os.path.join(wdir, "upper"), os.path.join(wdir, "work"), rootfs)
            config = oci_config(plan, rootfs, seccomp=seccomp, table=read_mountinfo())
            bundles.write_json(os.path.join(bundle, "config.json"), config, durable=False)  # dies with its container
            where = _cgroup.memory_dir_for(config["linux"]["cgroupsPath"])
            bundles.write_json(os.path.join(wdir, "meta.json"), {
                "id": cid, "worker": plan.worker_id, "image": plan.image, "labels": plan.label_map,
                "memcg": where[0] if where else None, "cgroup_version": where[1] if where else 1,
                "created_at": now_iso(), "logs": [plan.resources.logs.file_mb, plan.resources.logs.files]},
                durable=False)  # not flushed on a launch's path: see shim/durable.py
        except (OSError, BerthError) as exc:
            bundles.remove_worker_dir(wdir)
            if isinstance(exc, BerthError):
                raise
            raise EngineError("runc", f"cannot make the bundle of {plan.worker_id!r}: {exc}") from exc
        return cid

    def start(self, worker_id: str) -> None:
        meta, wdir = self._meta(worker_id), self._wdir(worker_id)
        logs = _log_limits(meta)
        self.shim.request({"op": "run", "id": meta["id"], "worker": worker_id, "dir": wdir,
                           "bundle": os.path.join(wdir, "bundle"), "log": os.path.join(wdir, "output.log"),
                           "log_max_bytes": logs.file_bytes, "log_files": logs.files,
                           "memcg": meta.get("memcg"), "cgroup_version": meta.get("cgroup_version", 1)}, timeout=120)

    def stop(self, worker_id: str, grace_s: float) -> None:
        cid = self._meta(worker_id)["id"]
        self.shim.request({"op": "kill", "id": cid, "signal": 15, "grace": max(0.0, grace_s)}, timeout=grace_s + 60)

    def force_kill(self, worker_id: str) -> None:
        self.shim.request({"op": "kill", "id": self._meta(worker_id)["id"], "signal": 9}, timeout=60)

    def remove(self, worker_id: str) -> None:
        wdir = self._wdir(worker_id)
        self._memfiles.pop(worker_id, None)
        meta = _read_meta(wdir)
        if meta is not None:
            if any(os.path.exists(os.path.join(wdir, f)) for f in ("started.json", "launch.json")):
                self.shim.request({"op": "remove", "id": meta["id"]}, timeout=60)  # asked to run it: it knows
            bundles.remove_worker_dir(wdir)
            return
        hand = self._by_hand().get(worker_id)
        if hand is not None:
            subprocess.run([self.runc, "--root", self._root, "delete", "--force", hand["id"]], capture_output=True,
                           check=False)
        if os.path.isdir(wdir):  # a half-made worker, or one whose meta.json was broken
            bundles.remove_worker_dir(wdir)

    # -- state ----------------------------------------------------------------------------------

    def _ended(self, wdir: str, cid: str, started: dict[str, Any] | None) -> dict[str, Any] | None:
        """How the worker ended: its ``exit.json``, else, once its process is gone, the record the
        shim holds in memory (not yet written: a full disk, or the moment before it is). None
        while it runs, and for a worker gone while no shim watched it (recovered as lost)."""
        ended = bundles.read_json(os.path.join(wdir, "exit.json"))
        if ended is not None or started is None:
            return ended
        pid = int(started["pid"])
        st = proc_state(pid)
        if st is not None and st[0] != "Z" and start_time(pid) == started.get("start_time"):
            return None
        if time.monotonic() < self._shim_quiet_until:
            return _UNANSWERED
        try:
            reply = self.shim.request({"op": "exit", "id": cid}, timeout=HEALTH_TIMEOUT_S, start=False)
        except WaitTimeout:  # a stuck shim: not asked again for a while, so `ps` stays quick
            self._shim_quiet_until = time.monotonic() + SHIM_QUIET_S
            return _UNANSWERED
        except BerthError:
            return None
        return reply.get("exit") or bundles.read_json(os.path.join(wdir, "exit.json"))

    def _state(self, worker_id: str, meta: dict[str, Any]) -> WorkerState:
        wdir = self._wdir(worker_id)
        labels = dict(meta.get("labels") or {})
        started = bundles.read_json(os.path.join(wdir, "started.json"))
        if started is not None and not isinstance(started.get("pid"), int):
            started = None  # not the shim's: treated as not started rather than failing the listing
        ended = self._ended(wdir, str(meta["id"]), started)
        unanswered = ended is _UNANSWERED
        ended = None if unanswered else ended
        pid = None
        if ended is not None:
            status = WorkerStatus.EXITED
        elif started is None:
            status = WorkerStatus.CREATED
        else:
            status, pid = WorkerStatus.RUNNING, int(started["pid"])
            st = proc_state(pid)
            if unanswered:  # ended, its shim does not answer: it says how once it does
                pid = None
            elif st is None or st[0] == "Z" or start_time(pid) != started.get("start_time"):
                status, pid = WorkerStatus.MISSING, None  # ended, and no shim has its status: recovered as lost
        rec = record_from_exit(ended) if ended is not None else None
        return WorkerState.from_labels(
            labels, worker_id=worker_id, container_id=str(meta["id"]), image=str(meta.get("image", "")), state=status,
            exit_code=rec.exit_code if rec else None,
            oom_killed=bool(rec and rec.oom_killed), oom_victim=rec.oom_victim if rec else None,
            started_at=(started or {}).get("started_at"),
            finished_at=rec.finished_at if rec else None, pid=pid)

    def _by_hand(self) -> dict[str, dict[str, Any]]:
        """Containers in this node's runc root that berth did not make but that carry this node's
        annotations (``runc list``: one runc process, spawned only when the root holds an id that
        is not of berth's form). A container started by hand under a 32-hex-digit id is not seen."""
        try:
            ids = os.listdir(self._root)
        except FileNotFoundError:
            return {}
        if all(_BERTH_CID.fullmatch(i) for i in ids):
            return {}  # only berth's own (uuid4 hex ids): no runc process to spawn on every lookup
        out = subprocess.run([self.runc, "--root", self._root, "list", "--format", "json"], capture_output=True,
                             check=False)
        try:
            found = json.loads(out.stdout or b"null") or []
        except ValueError:
            return {}
        mine: dict[str, dict[str, Any]] = {}
        for c in found:
            ann = WorkerLabels.decode(c.get("annotations") or {})
            wid = ann.worker_id
            if ann.node == self._node and wid and _read_meta(os.path.join(self._workers, wid)) is None:
                mine[wid] = c
        return mine

    def _hand_state(self, c: dict[str, Any]) -> WorkerState:
        ann = c.get("annotations") or {}
        config = bundles.read_json(os.path.join(c.get("bundle") or "/nonexistent", "config.json")) or {}
        status = _RUNC_STATUS.get(c.get("status", ""), WorkerStatus.UNKNOWN)
        return WorkerState.from_labels(
            bundles.labels_of(config) or dict(ann), container_id=str(c["id"]),
            image=str(bundles.request_from_oci(config).get("image", "")), state=status, started_at=c.get("created"),
            pid=int(c["pid"]) if status.running and c.get("pid") else None)

    def inspect(self, worker_id: str) -> WorkerState:
        try:
            return self._state(worker_id, self._meta(worker_id))
        except WorkerNotFound:
            hand = self._by_hand().get(worker_id)
            if hand is None:
                raise
            return self._hand_state(hand)

    def describe(self, worker_id: str) -> WorkerDescription:
        state = self.inspect(worker_id)
        meta = _read_meta(self._wdir(worker_id))
        if meta is not None:
            bundle, logs = os.path.join(self._wdir(worker_id), "bundle"), _log_limits(meta)
        else:  # started by hand: runc passes its stdio through, with no bound berth can state
            bundle, logs = str(self._by_hand()[worker_id].get("bundle") or "/nonexistent"), None
        config = bundles.read_json(os.path.join(bundle, "config.json")) or {}
        return WorkerDescription(worker=state, request=bundles.request_from_oci(config),
                                 pid=state.pid if state.running else None, logs=logs)

    def memory_usage(self, worker_id: str) -> int:
        """One file read once the worker's cgroup file is known (it is kept; a stale one can only
        fail to read, since the cgroup is named after the worker and goes with its container)."""
        path = self._memfiles.get(worker_id)
        if path is not None:
            try:
                return _cgroup.read_int(path)
            except (OSError, ValueError):
                self._memfiles.pop(worker_id, None)
        meta = self._meta(worker_id)
        if meta.get("memcg"):
            name = "memory.usage_in_bytes" if meta.get("cgroup_version", 1) == 1 else "memory.current"
            try:
                value = _cgroup.read_int(os.path.join(meta["memcg"], name))
            except (OSError, ValueError):
                pass
            else:
                if self._state(worker_id, meta).running:
                    self._memfiles[worker_id] = os.path.join(meta["memcg"], name)
                return value
        st = self._state(worker_id, meta)
        raise WorkerNotRunning(worker_id, st.state)

    def exec(self, worker_id: str, argv: Sequence[str]) -> ExecResult:
        """``runc exec -p``: the process is spelled out (the worker's user, cwd, no capabilities,
        no new privileges), so no argument of ``argv`` can be taken for a runc option."""
        meta, wdir = self._meta(worker_id), self._wdir(worker_id)
        st = self._state(worker_id, meta)
        if not st.running:
            raise WorkerNotRunning(worker_id, st.state)
        config = bundles.read_json(os.path.join(wdir, "bundle", "config.json")) or {}
        proc = {**config.get("process", {}), "args": list(argv), "terminal": False}
        path = os.path.join(wdir, f"exec-{uuid.uuid4().hex[:8]}.json")
        bundles.write_json(path, proc, durable=False)
        try:
            out = subprocess.run([self.runc, "--root", self._root, "exec", "-p", path, meta["id"]],
                                 stdin=subprocess.DEVNULL, capture_output=True, check=False)
        finally:
            os.unlink(path)
        code = out.returncode if out.returncode >= 0 else 128 - out.returncode
        return ExecResult(exit_code=code, output=out.stdout + out.stderr)

    def logs(self, worker_id: str, *, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        meta = self._meta(worker_id)
        current = os.path.join(self._wdir(worker_id), "output.log")
        files = [rotated(current, i) for i in range(_log_limits(meta).files - 1, -1, -1)]
        return read_logs(files, tail, follow, lambda: self._state(worker_id, meta).running)

    def list_workers(self) -> list[WorkerState]:
        out = []
        try:
            names = sorted(os.listdir(self._workers))
        except FileNotFoundError:
            names = []
        for name in names:
            meta = _read_meta(os.path.join(self._workers, name))
            if meta is not None:
                out.append(self._state(name, meta))
        out += [self._hand_state(c) for c in self._by_hand().values()]
        return out

    def exit_record(self, worker_id: str) -> ExitRecord | None:
        wdir = self._wdir(worker_id)
        meta = _read_meta(wdir)
        if meta is None:
            return None
        ended = self._ended(wdir, str(meta["id"]), bundles.read_json(os.path.join(wdir, "started.json")))
        return record_from_exit(ended) if ended is not None else None

    def exit_events(self) -> Iterator[ExitRecord | None]:
        delay = 0.1
        while not self._closed.is_set():
            try:
                for ev in self.shim.events():
                    self._shim_quiet_until = 0.0  # it speaks: ask it again
                    if ev is None:
                        delay = 0.1
                        yield None
                    else:
                        yield record_from_exit(ev)
            except BerthError as exc:
                log.warning("shim events: %s; retrying in %.1fs", exc, delay)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, 5.0)

    def health(self) -> str:
        """The monitor answers a ``hello`` within ``HEALTH_TIMEOUT_S``: nothing a worker does can
        keep it from answering (docs/runtimes.md), so a silent one is stuck, stopped or gone."""
        try:
            self.shim.request({"op": "hello"}, timeout=HEALTH_TIMEOUT_S, start=False)
        except WaitTimeout:
            return "shim unresponsive"
        except BerthError:
            return "shim not running"
        return "ok"

    def close(self) -> None:
        self._closed.set()
        if self._shim is not None:
            self._shim.close()


def _read_meta(wdir: str) -> dict[str, Any] | None:
    """The worker's ``meta.json`` if it is one berth wrote (an object with a container id and
    string labels), else None: an empty, half-written or hand-edited file costs its own worker
    (seen as not berth's, so ``rm`` clears it) and never the listing of the others."""
    meta = bundles.read_json(os.path.join(wdir, "meta.json"))
    if meta is None or not isinstance(meta.get("id"), str) or not meta["id"]:
        return None
    labels = meta.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        return None
    return meta
