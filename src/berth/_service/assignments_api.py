"""The desired state's routes: read it (with its version, applied version and rejections), and
replace it, the operator's whole or a tenant's part (``tenancy``, through ``Supervisor.put``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .access import Access, Caller
from .apimodels import ERRORS, AssignmentsBody, AssignmentsOut, PutRejected, PutResult, error, rejection_out
from .supervisor import Supervisor
from .tenancy import source_of


def assignments_router(sup: Supervisor, access: Access) -> APIRouter:
    router = APIRouter()

    @router.get("/assignments", response_model=AssignmentsOut, responses={401: ERRORS[401]})
    def get_assignments(caller: Caller = Depends(access.auth)) -> AssignmentsOut:  # noqa: B008
        specs = [s for _, s in sorted(sup.desired().items()) if caller.owns(s)]
        ids = {s.worker_id for s in specs}
        mine = [r for r in sup.rejections()
                if caller.tenant is None or r.worker_id in ids or r.source == source_of(caller.tenant)]
        return AssignmentsOut(version=sup.version, applied_version=sup.applied_version(),
                              workers=[s.model_dump(mode="json") for s in specs],
                              rejected=[rejection_out(r) for r in mine])

    @router.put("/assignments", response_model=PutResult,
                responses={**ERRORS, 422: {"model": PutRejected,
                                           "description": "Some entries were rejected (the valid ones were applied)"}})
    def put_assignments(body: AssignmentsBody, caller: Caller = Depends(access.auth)) -> JSONResponse:  # noqa: B008
        access.writable()
        if sup.fed_by is not None:
            return error(409, f"this node takes its assignments from {sup.fed_by}")
        done = sup.put(body.workers, body.version, caller.tenant)
        if done.refused:
            return JSONResponse({"detail": [{"loc": ["body", "workers", r.index, r.field] if r.index is not None
                                             else ["body", r.field], "msg": r.reason, "type": "forbidden"}
                                            for r in done.refused]}, status_code=403)
        out = PutResult(accepted=done.accepted, rejected=[rejection_out(r) for r in done.rejected]).model_dump()
        if done.rejected:
            detail = [{"loc": ["body", "workers", r.index, r.field or "worker"] if r.index is not None
                       else ["body", r.field or "workers"], "msg": r.reason, "type": "value_error"}
                      for r in done.rejected]
            return JSONResponse({"detail": detail, **out}, status_code=422)
        return JSONResponse(out)

    return router
