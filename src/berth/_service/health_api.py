"""``/healthz``: ok or degraded at once, whatever the engine does (it asks the engine probe, which
never waits on a frozen engine); with a token (or on the socket) also what makes it so."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .access import Access, Caller
from .apimodels import Health, HealthBrief
from .probe import OK, EngineProbe
from .supervisor import Supervisor


def health_router(sup: Supervisor, access: Access, probe: EngineProbe,
                  cluster: Callable[[], Mapping[str, Any]] | None = None) -> APIRouter:
    """``cluster``: the cluster agent's report, added to the operator's answer (not "ok": degraded)."""
    router = APIRouter()

    @router.get("/healthz", response_model=Health | HealthBrief, responses={503: {"model": Health | HealthBrief}})
    def healthz(caller: Caller = Depends(access.who)) -> JSONResponse:  # noqa: B008
        engine = probe.look(max_age_s=1.0).state  # within a second, whatever the engine does
        stale = sup.stale()
        extra = dict(cluster()) if cluster else {}
        ok = engine == OK and not stale and not sup.conflicts and extra.get("status", "ok") == "ok"
        body: dict[str, Any] = {"status": "ok" if ok else "degraded"}
        if caller.known:
            age = sup.last_pass_age()
            body.update(node=sup.config.node.name, engine=engine, loop="stale" if stale else "ok",
                        last_pass_age_s=None if age is None else round(age, 3),
                        workers=sup.counts(caller.tenant), version=sup.version, applied_version=sup.applied_version())
            if caller.tenant is None:  # other supervisors' workers and the cluster's are the operator's
                body.update(conflicts=sup.conflicts, state_problem=sup.state_problem)
                if cluster:
                    body["cluster"] = extra
        return JSONResponse(body, status_code=200 if ok else 503)

    return router
