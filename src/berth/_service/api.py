"""The HTTP API of a supervised node (FastAPI; OpenAPI at ``/openapi.json``).

It listens on a unix socket by default, where the socket's mode and group are the access
control. A TCP listener needs a bearer token from the config and binds to loopback unless an
address is given, because a network port that launches containers must not be open by accident.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from .._exceptions import BerthError, WorkerNotFound
from .._version import __version__
from .assignments import parse_document
from .metrics import Metrics
from .supervisor import Supervisor


class AssignmentsBody(BaseModel):
    """The desired state of the node; each entry has the keys of a spec file."""

    model_config = ConfigDict(extra="forbid")
    workers: list[dict[str, Any]] = Field(description="Worker specs (worker_id, topology_id, port, user, "
                                                      "command, env, image, cpu_percent, memory_mb, cores, "
                                                      "numa_node, pids_limit).")


class AssignmentsResult(BaseModel):
    accepted: list[str]
    rejected: list[dict[str, Any]]


class KillResult(BaseModel):
    worker_id: str
    grace_s: float
    note: str


class Health(BaseModel):
    status: str
    node: str
    engine: str
    workers: dict[str, int]


_bearer = HTTPBearer(auto_error=False)


def create_app(sup: Supervisor, token: str | None = None, metrics: Metrics | None = None,
               health: Callable[[], Mapping[str, Any]] | None = None) -> FastAPI:
    """Build the app. With ``token`` every endpoint but /healthz needs ``Authorization: Bearer``.

    ``health`` (the cluster agent's hook) adds its report to /healthz; not "ok" makes it degraded.
    """
    metrics = metrics or Metrics(sup)
    app = FastAPI(title="berth", version=__version__,
                  description="Keep a node's assigned workers running in hardened containers.")

    def auth(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:  # noqa: B008
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(auth)]

    @app.exception_handler(BerthError)
    async def _berth_error(_: Request, exc: BerthError) -> JSONResponse:
        status = 404 if isinstance(exc, WorkerNotFound) else 409
        return JSONResponse({"detail": [{"loc": [exc.field] if exc.field else [], "msg": exc.reason,
                                         "type": type(exc).__name__}]}, status_code=status)

    @app.get("/healthz", response_model=Health)
    def healthz() -> JSONResponse:
        engine = "ok"
        try:
            sup.node.ps()
        except BerthError:
            engine = "unreachable"
        extra = dict(health()) if health else {}
        ok = engine == "ok" and extra.get("status", "ok") == "ok"
        body = {"status": "ok" if ok else "degraded", "node": sup.config.node.name, "engine": engine,
                "workers": sup.counts(), **({"cluster": extra} if health else {})}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/workers", dependencies=guarded)
    def workers() -> list[dict[str, Any]]:
        return sup.statuses()

    @app.get("/workers/{worker_id}", dependencies=guarded, responses={404: {"description": "No such worker"}})
    def worker(worker_id: str) -> dict[str, Any]:
        return sup.status(worker_id)

    @app.put("/assignments", dependencies=guarded, response_model=AssignmentsResult,
             responses={409: {"description": "Assignments come from a file"},
                        422: {"description": "Some entries were rejected (the valid ones were applied)"}})
    def put_assignments(body: AssignmentsBody) -> JSONResponse:
        if sup.assignments_path is not None:
            raise HTTPException(409, f"this node takes its assignments from {sup.assignments_path}")
        parsed = parse_document({"workers": body.workers}, "api")
        rejected = sup.set_assignments(parsed)
        accepted = sorted(sup.desired())
        out = {"accepted": accepted, "rejected": [r.to_dict() for r in rejected]}
        if rejected:
            detail = [{"loc": ["body", "workers", r.index, r.field] if r.index is not None else ["body", r.field],
                       "msg": r.reason, "type": "value_error", "worker_id": r.worker_id} for r in rejected]
            return JSONResponse({"detail": detail, **out}, status_code=422)
        return JSONResponse(out)

    @app.post("/workers/{worker_id}/kill", dependencies=guarded, response_model=KillResult, status_code=202,
              responses={404: {"description": "No such worker"}})
    def kill(worker_id: str, grace: float | None = Query(None, ge=0, le=3600)) -> KillResult:
        sup.kill(worker_id, grace)
        used = sup.settings.grace_s if grace is None else grace
        return KillResult(worker_id=worker_id, grace_s=used,
                          note="stopped; it is still assigned, so the supervisor starts it again")

    @app.get("/metrics", dependencies=guarded, response_class=Response)
    def prom() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def serve(sup: Supervisor, socket_path: str | None, tcp: str | None, token: str | None,
          socket_mode: int = 0o660, socket_group: str | None = None, app: FastAPI | None = None) -> None:
    """Run the API until SIGINT/SIGTERM (uvicorn's handlers), on one listener (``app``: a prepared one)."""
    import signal

    import uvicorn

    # uvicorn re-raises SIGTERM/SIGINT once it has shut down; a no-op handler underneath lets the
    # caller finish its own shutdown (leave workers running, or drain them) instead of dying.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if tcp:
        host, _, port = tcp.rpartition(":")
        config = uvicorn.Config(app or create_app(sup, token=token), host=host or "127.0.0.1", port=int(port),
                                log_level="warning")
        uvicorn.Server(config).run()
        return
    assert socket_path is not None
    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = uvicorn.Server(uvicorn.Config(app or create_app(sup), uds=socket_path, log_level="warning"))
    _chmod_when_bound(server, socket_path, socket_mode, socket_group)
    previous = os.umask(0o177)  # the socket is born owner-only, then opened up to its mode
    try:
        server.run()
    finally:
        os.umask(previous)


def _chmod_when_bound(server: Any, path: str, mode: int, group: str | None) -> None:
    """uvicorn creates the socket with the process umask; narrow it as soon as it exists."""
    startup = server.startup

    async def startup_then_chmod(*args: Any, **kwargs: Any) -> None:
        await startup(*args, **kwargs)
        os.chmod(path, mode)
        if group:
            import grp

            os.chown(path, -1, grp.getgrnam(group).gr_gid)

    server.startup = startup_then_chmod
