"""The workers' routes: what the supervisor says of each assigned worker, and an operator's kill.

A tenant's token sees only its own workers: another's is 404, not even its existence.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from .._exceptions import WorkerNotFound
from .access import Access, Caller
from .apimodels import ERRORS, KillResult, WorkerOut, worker_out
from .supervisor import Supervisor


def workers_router(sup: Supervisor, access: Access) -> APIRouter:
    router = APIRouter()

    def mine(caller: Caller, worker_id: str) -> WorkerOut:
        view = sup.status(worker_id)
        if not caller.owns(view.spec):
            raise WorkerNotFound(worker_id)  # another tenant's worker: not even its existence
        return worker_out(view)

    @router.get("/workers", response_model=list[WorkerOut], responses={401: ERRORS[401]})
    def workers(caller: Caller = Depends(access.auth)) -> list[WorkerOut]:  # noqa: B008
        return [worker_out(v) for v in sup.statuses() if caller.owns(v.spec)]

    @router.get("/workers/{worker_id}", response_model=WorkerOut, responses={401: ERRORS[401], 404: ERRORS[404]})
    def worker(worker_id: str, caller: Caller = Depends(access.auth)) -> WorkerOut:  # noqa: B008
        return mine(caller, worker_id)

    @router.post("/workers/{worker_id}/kill", response_model=KillResult, status_code=202, responses=ERRORS)
    def kill(worker_id: str, grace: float | None = Query(None, ge=0, le=3600),
             caller: Caller = Depends(access.auth)) -> KillResult:  # noqa: B008
        access.writable()
        mine(caller, worker_id)
        sup.kill(worker_id, grace)
        used = sup.settings.grace_s if grace is None else grace
        return KillResult(worker_id=worker_id, grace_s=used,
                          note="stopping; it is still assigned, so the supervisor starts it again at once")

    return router
