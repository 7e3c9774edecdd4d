"""The HTTP API of a supervised node (FastAPI; OpenAPI at ``/openapi.json``, reference at ``/docs``).

It listens on a unix socket by default, where the socket's mode and group are the access
control. A TCP listener needs the operator's bearer token from the config and binds to loopback
unless an address is given, because a network port that launches containers must not be open by
accident. Over TCP everything but ``/healthz`` needs a token, and an unauthenticated
``/healthz`` says only ok or degraded. Tenant tokens (``[[api.tenants]]``) see and change only
the workers of their users and topologies (``access``); the operator's token may do anything.

One router per resource (workers, assignments, health, metrics, docs), as the Storm plugin's and
the worker-launcher's are; each maps the supervisor's typed values to the wire models
(``apimodels``) and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from .._core.serviceconfig import TenantToken
from .._version import __version__
from .access import Access
from .apimodels import BodyLimit, install_error_handlers
from .assignments_api import assignments_router
from .docs_api import docs_router
from .health_api import health_router
from .metrics import Metrics
from .metrics_api import metrics_router
from .supervisor import Supervisor
from .workers_api import workers_router


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
    why = f"this supervisor (berth supervise) takes its assignments from {sup.assignments_path}" if read_only else None
    access = Access(token, tenants, read_only=why)
    for router in (health_router(sup, access, metrics.probe, health), workers_router(sup, access),
                   assignments_router(sup, access), metrics_router(metrics, access), docs_router(app, access)):
        app.include_router(router)
    return app
