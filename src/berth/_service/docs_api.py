"""The API's own description: ``/openapi.json`` and ``/docs``, a reference page with no scripts
or CDN assets (it works offline); both need a token where the API does."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from .access import Access
from .apimodels import docs_page


def docs_router(app: FastAPI, access: Access) -> APIRouter:
    router = APIRouter(dependencies=[Depends(access.auth)])

    @router.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()))

    return router
