"""The HTTP API of a supervised node (FastAPI; OpenAPI at ``/openapi.json``, reference at ``/docs``).

It listens on a unix socket by default, where the socket's mode and group are the access
control. A TCP listener needs the operator's bearer token from the config and binds to loopback
unless an address is given, because a network port that launches containers must not be open by
accident. Over TCP everything but ``/healthz`` needs a token, and an unauthenticated
``/healthz`` says only ok or degraded. Tenant tokens (``[[api.tenants]]``) see and change only
the workers of their users and topologies; the operator's token may do anything.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .._core.serviceconfig import TenantToken
from .._core.spec import WorkerSpec
from .._exceptions import BerthError, WorkerNotFound
from .._version import __version__
from .apimodels import (
    ERRORS,
    AssignmentsBody,
    AssignmentsOut,
    BodyLimit,
    Health,
    HealthBrief,
    KillResult,
    PutRejected,
    PutResult,
    WorkerOut,
    docs_page,
    error,
    install_error_handlers,
)
from .assignments import parse_document
from .metrics import Metrics
from .supervisor import Supervisor

_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class Caller:
    """Who is asking: the operator (``tenant`` None) or one tenant; ``known`` False for a caller
    without a valid token (only a brief ``/healthz``)."""

    known: bool
    tenant: TenantToken | None = None

    def owns(self, spec: WorkerSpec | dict[str, Any]) -> bool:
        if self.tenant is None:
            return self.known
        user, topo = (spec.user, spec.topology_id) if isinstance(spec, WorkerSpec) else \
            (str(spec.get("user")), str(spec.get("topology_id")))
        return self.tenant.allows(user, topo)


def create_app(sup: Supervisor, token: str | None = None, metrics: Metrics | None = None,
               tenants: tuple[TenantToken, ...] = (), read_only: bool = False,
               health: Callable[[], Mapping[str, Any]] | None = None) -> FastAPI:
    """Build the app. With ``token`` (TCP) every endpoint but /healthz needs a bearer token, the
    operator's or a tenant's. ``read_only`` (``berth supervise``) refuses every change.
    ``health`` (the cluster agent's hook) adds its report to /healthz; not "ok" makes it degraded."""
    metrics = metrics or Metrics(sup)
    app = FastAPI(title="berth", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="Keep a node's assigned workers running in hardened containers.")
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    put_lock = threading.Lock()
    open_access = token is None

    def who(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Caller:  # noqa: B008
        if open_access:
            return Caller(known=True)
        if creds is None:
            return Caller(known=False)
        given = creds.credentials.encode()
        if token is not None and hmac.compare_digest(given, token.encode()):
            return Caller(known=True)
        for t in tenants:
            if hmac.compare_digest(given, t.token.encode()):
                return Caller(known=True, tenant=t)
        return Caller(known=False)

    def auth(caller: Caller = Depends(who)) -> Caller:  # noqa: B008
        if not caller.known:
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        return caller

    def operator(caller: Caller = Depends(auth)) -> Caller:  # noqa: B008
        if caller.tenant is not None:
            raise HTTPException(403, "this endpoint needs the operator's token")
        return caller

    def writable() -> None:
        if read_only:
            raise HTTPException(403, "read-only: this supervisor (berth supervise) takes its assignments from "
                                f"{sup.assignments_path}")

    def mine(caller: Caller, worker_id: str) -> dict[str, Any]:
        st = sup.status(worker_id)
        if not caller.owns(st["spec"]):
            raise WorkerNotFound(worker_id)  # another tenant's worker: not even its existence
        return st

    probe: list[tuple[float, str]] = []

    def engine_state() -> str:
        """Asked of the engine at most once a second, however often /healthz is asked (no token
        needed: a caller must not be able to turn it into a stream of engine calls)."""
        now = time.monotonic()
        if not probe or now - probe[0][0] >= 1.0:
            try:
                sup.node.ps()
                state = "ok"
            except BerthError:
                state = "unreachable"
            probe[:] = [(now, state)]
        return probe[0][1]

    @app.get("/healthz", response_model=Health | HealthBrief, responses={503: {"model": Health | HealthBrief}})
    def healthz(caller: Caller = Depends(who)) -> JSONResponse:  # noqa: B008
        engine = engine_state()
        stale = sup.stale()
        extra = dict(health()) if health else {}
        ok = engine == "ok" and not stale and not sup.conflicts and extra.get("status", "ok") == "ok"
        body: dict[str, Any] = {"status": "ok" if ok else "degraded"}
        if caller.known:
            last = sup.last_pass
            body.update(node=sup.config.node.name, engine=engine, loop="stale" if stale else "ok",
                        last_pass_age_s=None if last is None else round(sup._clock() - last, 3),
                        workers=sup.counts(), version=sup.version, applied_version=sup.applied_version())
            if caller.tenant is not None:  # its own workers; other supervisors' and the cluster's are the operator's
                counts = dict.fromkeys(sup.counts(), 0)
                for st in sup.statuses():
                    if caller.owns(st["spec"]):
                        counts[st["state"]] += 1
                body["workers"] = counts
            else:
                body.update(conflicts=sup.conflicts, state_problem=sup.state_problem)
                if health:
                    body["cluster"] = extra
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/workers", response_model=list[WorkerOut], responses={401: ERRORS[401]})
    def workers(caller: Caller = Depends(auth)) -> list[dict[str, Any]]:  # noqa: B008
        return [s for s in sup.statuses() if caller.owns(s["spec"])]

    @app.get("/workers/{worker_id}", response_model=WorkerOut, responses={401: ERRORS[401], 404: ERRORS[404]})
    def worker(worker_id: str, caller: Caller = Depends(auth)) -> dict[str, Any]:  # noqa: B008
        return mine(caller, worker_id)

    @app.get("/assignments", response_model=AssignmentsOut, responses={401: ERRORS[401]})
    def get_assignments(caller: Caller = Depends(auth)) -> dict[str, Any]:  # noqa: B008
        specs = [s.model_dump(mode="json") for _, s in sorted(sup.desired().items()) if caller.owns(s)]
        ids = {s["worker_id"] for s in specs}
        rejected = [r.to_dict() for r in sup.rejections()
                    if caller.tenant is None or r.worker_id in ids or r.source == f"api:{caller.tenant.name}"]
        return {"version": sup.version, "applied_version": sup.applied_version(), "workers": specs,
                "rejected": rejected}

    @app.put("/assignments", response_model=PutResult,
             responses={**ERRORS, 422: {"model": PutRejected,
                                        "description": "Some entries were rejected (the valid ones were applied)"}})
    def put_assignments(body: AssignmentsBody, caller: Caller = Depends(auth)) -> JSONResponse:  # noqa: B008
        writable()
        if sup.assignments_path is not None:
            return error(409, f"this node takes its assignments from {sup.assignments_path}")
        with put_lock:
            return _put(body, caller)

    def _put(body: AssignmentsBody, caller: Caller) -> JSONResponse:
        source = "api" if caller.tenant is None else f"api:{caller.tenant.name}"
        if caller.tenant is not None:
            others = {w: s for w, s in sup.desired().items() if not caller.owns(s)}
            refused = _refusals(caller.tenant, body.workers, others)
            if body.version is not None:  # the node's assignment version is the operator's to set
                refused.append({"loc": ["body", "version"], "msg": "only the operator's token sets the version",
                                "type": "forbidden"})
            if refused:
                return JSONResponse({"detail": refused}, status_code=403)
            parsed = parse_document({"workers": []}, "api")
            for wid, spec in others.items():
                parsed.add(spec, sup._sources.get(wid, "api"), None)
            parse_document({"workers": body.workers}, source, into=parsed)
        else:
            parsed = parse_document({"workers": body.workers}, source)
        rejected = sup.set_assignments(parsed, version=body.version if caller.tenant is None else sup.version)
        accepted = sorted(w for w, s in sup.desired().items() if caller.owns(s))
        out = {"accepted": accepted, "rejected": [r.to_dict() for r in rejected]}
        if rejected:
            detail = [{"loc": ["body", "workers", r.index, r.field or "worker"] if r.index is not None
                       else ["body", r.field or "workers"], "msg": r.reason, "type": "value_error"} for r in rejected]
            return JSONResponse({"detail": detail, **out}, status_code=422)
        return JSONResponse(out)

    @app.post("/workers/{worker_id}/kill", response_model=KillResult, status_code=202, responses=ERRORS)
    def kill(worker_id: str, grace: float | None = Query(None, ge=0, le=3600),
             caller: Caller = Depends(auth)) -> KillResult:  # noqa: B008
        writable()
        mine(caller, worker_id)
        sup.kill(worker_id, grace)
        used = sup.settings.grace_s if grace is None else grace
        return KillResult(worker_id=worker_id, grace_s=used,
                          note="stopping; it is still assigned, so the supervisor starts it again at once")

    @app.get("/metrics", response_class=Response, responses={401: ERRORS[401], 403: ERRORS[403]})
    def prom(_: Caller = Depends(operator)) -> Response:  # noqa: B008
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Caller = Depends(auth)) -> JSONResponse:  # noqa: B008
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs(_: Caller = Depends(auth)) -> HTMLResponse:  # noqa: B008
        return HTMLResponse(docs_page(app.openapi()))

    return app


def _refusals(tenant: TenantToken, entries: list[dict[str, Any]], others: dict[str, WorkerSpec]) -> list[Any]:
    """Each entry a tenant may not make: another user, another topology, another's worker id,
    port or topology. Said without naming the other's worker or user (the rejection of a clash
    would: not even their existence is a tenant's to learn)."""
    ports = {s.port for s in others.values()}
    topologies = {s.topology_id: s.user for s in others.values()}
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            continue  # malformed: parse_document rejects it with its reason
        user, topo, wid = e.get("user"), e.get("topology_id"), e.get("worker_id")
        if str(user) not in tenant.users:
            out.append((i, "user", f"tenant {tenant.name!r} may not launch as user {user!r}"))
        if not tenant.allows_topology(str(topo)):
            out.append((i, "topology_id", f"tenant {tenant.name!r} may not launch in topology {topo!r}"))
        elif topologies.get(str(topo), user) != user:
            out.append((i, "topology_id", f"topology {topo!r} belongs to another tenant"))
        if isinstance(wid, str) and wid in others:  # not a string: parse_document says why
            out.append((i, "worker_id", f"worker id {wid!r} belongs to another tenant"))
        if isinstance(e.get("port"), int) and e.get("port") in ports:
            out.append((i, "port", f"port {e.get('port')!r} is taken by another tenant's worker"))
    return [{"loc": ["body", "workers", i, k], "msg": m, "type": "forbidden"} for i, k, m in out]
