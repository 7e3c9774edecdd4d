"""``/metrics`` (Prometheus text), for the operator's token only."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from .access import Access
from .apimodels import ERRORS
from .metrics import Metrics


def metrics_router(metrics: Metrics, access: Access) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", response_class=Response, responses={401: ERRORS[401], 403: ERRORS[403]},
                dependencies=[Depends(access.operator)])
    def prom() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router
