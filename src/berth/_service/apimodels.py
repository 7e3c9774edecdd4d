"""The HTTP API's typed bodies (they are its OpenAPI schema), its one error shape, and the
offline ``/docs`` page.

Every 4xx and 5xx answer has the same body, ``{"detail": [{"loc", "msg", "type"}]}`` (FastAPI's
validation shape, so a client parses one thing); times are ISO 8601 UTC strings.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._exceptions import BerthError, WorkerNotFound
from .._runtimes.base import ExitRecord
from .assignments import MAX_ASSIGNMENTS_BYTES, Rejection
from .phase import iso
from .slot import SlotView


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: ['body', 'workers', 0, 'port'], a field name, or [].")
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[ErrorItem]


class ExitOut(BaseModel):
    worker_id: str
    container_id: str
    exit_code: int | None = Field(description="Shell convention (128+N for signal N); null when the status was lost.")
    signal: int | None
    oom_killed: bool
    started_at: str | None
    finished_at: str | None
    exact: bool
    core_dumped: bool
    oom_victim: str | None
    status_lost: bool


class WorkerOut(BaseModel):
    worker_id: str
    state: str = Field(description="The supervisor's phase: pending, starting, running, exited, backoff, "
                                   "crash-looping, failed, rejected, no-capacity, stalled, stopping, stopped.")
    container_id: str | None
    restarts: int
    failures: int = Field(description="Consecutive failed runs; reset by a run of healthy_after_s.")
    next_start_in_s: float | None
    next_start_at: str | None
    last_exit: ExitOut | None
    last_error: str | None
    since: str | None = Field(description="When it entered this state (ISO 8601).")
    assignment_version: str | None
    busy: str | None = Field(description="The action in flight for it (launch, stop, replace, kill), if any.")
    spec: dict[str, Any]


class RejectionOut(BaseModel):
    source: str
    index: int | None
    worker_id: str | None
    field: str | None
    reason: str
    retried: bool = Field(False, description="True for a worker waiting for the node's capacity: launched once it "
                                            "fits (not a rejection for ever).")


class AssignmentsBody(BaseModel):
    """The desired state of the node (or, with a tenant token, of the tenant's part of it)."""

    model_config = ConfigDict(extra="forbid")
    workers: list[dict[str, Any]] = Field(max_length=4096,
                                          description="Worker specs (worker_id, topology_id, port, user, "
                                                      "command, env, image, cpu_percent, memory_mb, cores, "
                                                      "numa_node, pids_limit).")
    version: str | None = Field(None, max_length=256, description="An opaque assignment version, reported back.")


class AssignmentsOut(BaseModel):
    version: str | None
    applied_version: str | None = Field(description="The version once every worker has been launched from it.")
    workers: list[dict[str, Any]] = Field(description="The desired specs.")
    rejected: list[RejectionOut]


class PutResult(BaseModel):
    accepted: list[str]
    rejected: list[RejectionOut]


class PutRejected(ErrorBody):
    accepted: list[str]
    rejected: list[RejectionOut]


class KillResult(BaseModel):
    worker_id: str
    grace_s: float
    note: str


class HealthBrief(BaseModel):
    status: str = Field(description="ok, or degraded (engine unreachable or runc monitor unresponsive, loop stale, "
                        "another supervisor).")


class Health(HealthBrief):
    node: str
    engine: str = Field(description="ok; unreachable (the engine); not answering (no answer within 0.8 s); or what the "
                        "runtime's own check said: shim unresponsive, shim not running (runc). /healthz answers "
                        "within a second whatever the engine does.")
    loop: str
    last_pass_age_s: float | None
    version: str | None
    applied_version: str | None
    conflicts: dict[str, list[str]] | None = Field(None, description="Not shown to a tenant's token.")
    state_problem: str | None = Field(None, description="Not shown to a tenant's token.")
    workers: dict[str, int] = Field(description="By phase; a tenant's token counts only its own workers.")
    cluster: dict[str, Any] | None = Field(None, description="The cluster agent's report, under berth agent.")


def exit_out(rec: ExitRecord) -> ExitOut:
    return ExitOut(**rec.to_dict())


def worker_out(v: SlotView) -> WorkerOut:
    """The wire shape of what the supervisor says of a worker (times as ISO 8601)."""
    return WorkerOut(worker_id=v.worker_id, state=v.phase.value, container_id=v.container_id, restarts=v.restarts,
                     failures=v.failures, next_start_in_s=v.next_start_in_s, next_start_at=iso(v.next_start_at),
                     last_exit=exit_out(v.last_exit) if v.last_exit else None, last_error=v.last_error,
                     since=iso(v.since), assignment_version=v.version, busy=v.busy, spec=v.spec.model_dump(mode="json"))


def rejection_out(r: Rejection) -> RejectionOut:
    return RejectionOut(**r.to_dict())


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": what} for code, what in (
        (401, "No valid bearer token"), (403, "Not allowed for this token or on this socket"),
        (404, "No such worker"), (409, "Conflicts with the node's state"))}


def error(status: int, msg: str, loc: list[str | int] | None = None, kind: str = "error") -> JSONResponse:
    return JSONResponse({"detail": [{"loc": loc or [], "msg": msg, "type": kind}]}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = error(exc.status_code, str(exc.detail), kind="http_error")
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        items = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                 for e in exc.errors()]
        return JSONResponse({"detail": items}, status_code=422)

    @app.exception_handler(BerthError)
    async def _berth(_: Request, exc: BerthError) -> JSONResponse:
        status = 404 if isinstance(exc, WorkerNotFound) else 409
        return error(status, exc.reason, [exc.field] if exc.field else [], type(exc).__name__)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}", kind="internal")


def docs_page(spec: dict[str, Any]) -> str:
    """The API reference as one self-contained HTML page: no scripts, no CDN, works offline."""
    esc = html.escape
    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            params = ", ".join(f"{p['name']} ({p.get('in')})" for p in op.get("parameters", []))
            codes = ", ".join(sorted(op.get("responses", {})))
            desc = op.get("description") or op.get("summary") or ""
            rows.append(f"<tr><td><code>{esc(method.upper())} {esc(path)}</code></td><td>{esc(desc)}</td>"
                        f"<td>{esc(params)}</td><td>{esc(codes)}</td></tr>")
    info = spec.get("info", {})
    return ("<!doctype html><html><head><meta charset='utf-8'><title>berth API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border-bottom:1px solid #ccc;padding:.3em;"
            "text-align:left;vertical-align:top}</style></head><body>"
            f"<h1>{esc(str(info.get('title', 'berth')))} {esc(str(info.get('version', '')))}</h1>"
            f"<p>{esc(str(info.get('description', '')))} The full schema: <a href='openapi.json'>openapi.json</a>.</p>"
            "<table><tr><th>endpoint</th><th>what</th><th>parameters</th><th>answers</th></tr>"
            + "".join(rows) + "</table></body></html>")


MAX_BODY_BYTES = MAX_ASSIGNMENTS_BYTES
"""The largest request body read (an assignments document's limit); past it, 413 unread."""


class BodyLimit:
    """ASGI middleware: refuse a body over ``MAX_BODY_BYTES`` (413) whether its length is
    declared or it comes chunked; no more than the limit is ever held in memory."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            await error(413, f"the body is larger than {self.limit} bytes")(scope, receive, send)
            return
        body, more = [], True
        size = 0
        while more:  # read it here, up to the limit, then hand it over whole
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await error(413, f"the body is larger than {self.limit} bytes")(scope, receive, send)
                return
            body.append(message)
            more = message.get("more_body", False)
        await self.app(scope, _replay(body, receive), send)


def _replay(messages: list[Any], then: Any = None) -> Any:
    pending = list(messages)

    async def receive() -> Any:
        if pending:
            return pending.pop(0)
        return await then() if then is not None else {"type": "http.disconnect"}

    return receive
