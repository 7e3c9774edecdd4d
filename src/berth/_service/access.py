"""Who is asking the API, and what each kind of caller may do: the dependencies every router uses.

On the unix socket the socket's mode is the access control and every caller is the operator. Over
TCP everything but ``/healthz`` needs a bearer token: the operator's (``api.token``) may do
anything; a tenant's (``[[api.tenants]]``) sees and changes only the workers of its users and
topologies. ``read_only`` (``berth supervise``'s socket) refuses every change.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .._core.serviceconfig import TenantToken
from .._core.spec import WorkerSpec
from .tenancy import owns

_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class Caller:
    """Who is asking: the operator (``tenant`` None) or one tenant; ``known`` False for a caller
    without a valid token (only a brief ``/healthz``)."""

    known: bool
    tenant: TenantToken | None = None

    def owns(self, spec: WorkerSpec) -> bool:
        return self.known and owns(self.tenant, spec)


class Access:
    """The API's dependencies (``Depends(access.auth)``…), for one app."""

    def __init__(self, token: str | None, tenants: tuple[TenantToken, ...] = (), read_only: str | None = None) -> None:
        """``token`` None: every caller is the operator (the unix socket). ``read_only``: why
        every change is refused (None: changes are allowed)."""

        def who(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Caller:  # noqa: B008
            if token is None:
                return Caller(known=True)
            if creds is None:
                return Caller(known=False)
            given = creds.credentials.encode()
            if hmac.compare_digest(given, token.encode()):
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
            if read_only is not None:
                raise HTTPException(403, f"read-only: {read_only}")

        self.who: Callable[..., Caller] = who
        """Any caller, known or not (``/healthz``)."""
        self.auth: Callable[..., Caller] = auth
        """A caller with a valid token (or on the socket)."""
        self.operator: Callable[..., Caller] = operator
        self.writable: Callable[[], None] = writable
