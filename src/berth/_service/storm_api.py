"""The routes Storm's plugin calls (``/storm/v1/…``), served by ``berth serve --storm``.

Only on the unix socket: its group (``api.socket_group``, Storm's group) is the first gate, and
each connection's peer is then known from the kernel (``SO_PEERCRED``): with
``storm.supervisor_user`` set, only that user (and root) gets an answer, whoever else is in the
group. No worker reaches the socket (``serve`` refuses a socket under any tree a worker sees, and
``StormDirs`` refuses a worker whose user is in the socket's group).

Every call answers within a bound: a launch is the longest (create and start a container); a kill
only starts the SIGTERM; the exit long poll waits at most ``MAX_WAIT_S`` and at most
``MAX_POLLS`` of them wait at once.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .._core.spec import ID_PATTERN, spec_from_mapping
from .._exceptions import BerthError
from .._version import __version__
from .apimodels import BodyLimit, ExitOut, install_error_handlers
from .stormnode import StormService

MAX_WAIT_S = 30.0
MAX_POLLS = 4
MAX_EXITS = 256
MAX_BODY = 4 * 1024 * 1024
"""A launch request: Storm's worker command line and environment (the script has this maximum)."""
MAX_OUTPUT = 64 * 1024
"""The tail of a profiling command's output that is answered (and logged by the plugin)."""
PEER_HOST = "uid"
"""``scope["client"]`` on the unix socket is ``("uid", <peer uid>)`` (``PeerCredProtocol``)."""
_ID = Path(pattern=ID_PATTERN.pattern, max_length=128)


class LaunchIn(BaseModel):
    """``launchWorkerProcess``'s arguments, with what ``reserveResourcesForWorker`` reserved."""

    model_config = ConfigDict(extra="forbid")
    worker_id: str
    topology_id: str
    port: int
    user: str
    command: list[str] = Field(max_length=65536)
    env: dict[str, str] = Field(default_factory=dict, max_length=4096)
    image: str | None = Field(default=None, description="The topology's topology.oci.image; null: the node's.")
    memory_mb: int | None = Field(default=None, description="Storm's memMb: on-heap + off-heap + margin.")
    cpu_percent: int | None = Field(default=None, description="Storm's cpu: 100 is one core.")
    numa_id: str | None = None
    target_dir: str = Field(max_length=4096)


class LaunchOut(BaseModel):
    worker_id: str
    container_id: str
    image: str
    memory_mb: int
    cpu_percent: int


class ProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, max_length=64)


class ProfileOut(BaseModel):
    exit_code: int
    output: str = Field(description=f"The last {MAX_OUTPUT} bytes of its output.")


class AckItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker_id: str
    container_id: str


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exits: list[AckItem] = Field(max_length=MAX_EXITS)


def storm_router(service: StormService, require_peer: bool = True) -> APIRouter:
    """The plugin's routes. ``require_peer`` False: callers without kernel-given credentials
    (in-process tests) are let through."""
    allowed = {0}
    if service.config.storm is not None and service.config.storm.supervisor_user is not None:
        allowed.add(service.dirs.supervisor_uid)

    def storm_caller(request: Request) -> None:
        client = request.client
        if client is None or client.host != PEER_HOST:
            if require_peer:
                raise HTTPException(403, "the Storm routes answer only on berth's unix socket")
            return
        if client.port not in allowed:
            raise HTTPException(403, f"uid {client.port} may not use the Storm routes: only Storm's supervisor "
                                "(berth.storm.supervisor.user) and root may")

    router = APIRouter(prefix="/storm/v1", dependencies=[Depends(storm_caller)])
    polls = threading.BoundedSemaphore(MAX_POLLS)

    @router.get("/hello")
    def hello() -> dict[str, Any]:
        """What the plugin logs at ``prepare``: which berth answers, for which node."""
        return {"berth": __version__, "node": service.config.node.name, "runtime": service.config.node.runtime,
                "local_dir": service.config.node.local_dir}

    @router.post("/workers", status_code=201, response_model=LaunchOut)
    def launch(body: LaunchIn) -> LaunchOut:
        fields = body.model_dump(exclude={"target_dir", "numa_id"}, exclude_none=True)
        spec = spec_from_mapping(fields, "request")
        handle = service.launch(spec, body.target_dir, body.numa_id)
        r = handle.plan.resources
        return LaunchOut(worker_id=handle.worker_id, container_id=handle.container_id, image=handle.plan.image,
                         memory_mb=r.memory_mb, cpu_percent=r.cpu_percent)

    @router.post("/workers/{worker_id}/kill", status_code=202)
    def kill(worker_id: str = _ID) -> dict[str, str]:
        service.kill(worker_id)
        return {"worker_id": worker_id, "status": "SIGTERM sent; SIGKILL after the grace period"}

    @router.post("/workers/{worker_id}/force-kill")
    def force_kill(worker_id: str = _ID) -> dict[str, str]:
        service.force_kill(worker_id)
        return {"worker_id": worker_id, "status": "SIGKILL sent"}

    @router.get("/workers/{worker_id}/dead")
    def dead(worker_id: str = _ID) -> dict[str, bool]:
        return {"dead": service.all_dead(worker_id)}

    @router.get("/workers/{worker_id}/memory")
    def memory(worker_id: str = _ID) -> dict[str, int]:
        return {"bytes": service.memory_usage(worker_id)}

    @router.get("/memory")
    def free_memory() -> dict[str, Any]:
        free, source = service.free_memory_mb()
        return {"free_mb": free, "source": source}

    @router.post("/workers/{worker_id}/cleanup")
    def cleanup(worker_id: str = _ID) -> dict[str, str]:
        service.cleanup(worker_id)
        return {"worker_id": worker_id, "status": "removed"}

    @router.post("/workers/{worker_id}/profile", response_model=ProfileOut)
    def profile(body: ProfileIn, worker_id: str = _ID) -> ProfileOut:
        result = service.profile(worker_id, body.command)
        out = result.output[-MAX_OUTPUT:].decode("utf-8", "replace")
        if result.exit_code in (126, 127):
            out += (f"\nberth: {body.command[0]} could not be run inside the worker's container (exit "
                    f"{result.exit_code}): the image or STORM_HOME lacks it")
        return ProfileOut(exit_code=result.exit_code, output=out)

    @router.get("/exits", response_model=dict[str, list[ExitOut]])
    def exits(wait: float = Query(0.0, ge=0, le=MAX_WAIT_S), limit: int = Query(64, ge=1, le=MAX_EXITS)) -> Any:
        """Exits not yet acknowledged, oldest first; with ``wait``, as soon as there is one."""
        if wait <= 0:
            return {"exits": [r.to_dict() for r in service.ledger.pending(limit)]}
        if not polls.acquire(blocking=False):
            raise HTTPException(429, f"{MAX_POLLS} polls wait already; poll without wait, or later")
        try:
            return {"exits": [r.to_dict() for r in service.ledger.wait(wait, limit)]}
        finally:
            polls.release()

    @router.post("/exits/ack")
    def ack(body: AckIn) -> dict[str, list[str]]:
        """The callback of each of these exits has run: they are not handed out again."""
        done = [a.worker_id for a in body.exits if service.ledger.ack(a.worker_id, a.container_id)]
        return {"acked": done}

    return router


def create_storm_app(service: StormService, routers: Sequence[APIRouter] = (), require_peer: bool = True) -> FastAPI:
    """The app of ``berth serve --storm``: the plugin's routes, ``routers`` (the worker-launcher
    replacement's), and a ``/healthz``."""
    app = FastAPI(title="berth (storm)", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="The node side of berth's Storm isolation plugin.")
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.include_router(storm_router(service, require_peer))
    for router in routers:
        app.include_router(router)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            workers = len(service.node.ps())
            engine = "ok"
        except BerthError:
            workers, engine = 0, "unreachable"
        body = {"status": "ok" if engine == "ok" else "degraded", "mode": "storm", "node": service.config.node.name,
                "engine": engine, "workers": workers, "exits": service.ledger.counts()}
        return JSONResponse(body, status_code=200 if engine == "ok" else 503)

    return app


def peer_protocol() -> type:
    """uvicorn's h11 protocol, with the connection's peer uid (``SO_PEERCRED``) as its client."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class PeerCredProtocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", raw)
                self.client = (PEER_HOST, uid)

    return PeerCredProtocol
