"""The worker-launcher's routes: ``berth-worker-launcher`` (run by Storm's supervisor in place of
Storm's setuid ``worker-launcher``) posts its argv here and prints what comes back.

Served by ``berth serve --storm`` beside the plugin's routes, on the same unix socket. Only Storm's
supervisor may ask: the route reads the caller's uid from the kernel (``SO_PEERCRED``, which
``storm_api.peer_protocol`` puts in the request's client) and answers only
``storm.supervisor_user``'s (and root's, who could do all this anyway). Anywhere else, or with no
supervisor user configured, every call is refused. A worker cannot reach the socket at all (berth
refuses a socket under any tree a worker sees, and a worker user in the socket's group).
"""

from __future__ import annotations

import grp
import logging
import shlex
from typing import Protocol

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from .._core.config import NodeConfig
from .._node import launcher
from .._node.launcher import LauncherPolicy, Workers, resolve_policy
from .._node.node import Node
from .._node.stormdirs import StormDirs
from .apimodels import ERRORS
from .storm_api import PEER_HOST

log = logging.getLogger("berth.launcher")
ROUTE = "/storm/launcher"


class LauncherCall(BaseModel):
    argv: list[str] = Field(max_length=64, description="What Storm passed after the program's name: "
                            "user, command, arguments.")


class LauncherResult(BaseModel):
    code: int = Field(description="The exit code, Storm's worker-launcher's for the same case.")
    output: list[str] = Field(description="What the command prints (Storm logs it).")


class LauncherSetup(BaseModel):
    supervisor_user: str
    uid: int
    group: str


class Served(Protocol):
    """What the routes need of ``berth serve --storm``'s service (``stormnode.StormService``)."""

    @property
    def node(self) -> Node: ...

    @property
    def config(self) -> NodeConfig: ...

    @property
    def dirs(self) -> StormDirs: ...


def launcher_router(service: Served) -> APIRouter:
    """The routes, for the workers of ``service`` (``berth serve --storm``)."""
    node = service.node
    policy = resolve_policy(service.config, service.dirs)
    router = APIRouter()
    workers = Workers(running=lambda: [w for w in node.ps(detail=True) if w.running], exec_in=node.exec)

    def caller(request: Request) -> tuple[int, LauncherPolicy]:
        if policy is None:
            raise HTTPException(403, "the worker-launcher is not enabled on this node: set berth.storm.supervisor.user "
                                "(storm.supervisor_user) to the user Storm's supervisor runs as")
        client = request.client
        if client is None or client.host != PEER_HOST:
            raise HTTPException(403, "the worker-launcher answers only on berth's unix socket")
        if client.port not in (0, policy.supervisor_uid):
            log.warning("worker-launcher: refused a call from uid %d", client.port)
            raise HTTPException(403, f"uid {client.port} may not use the worker-launcher: only Storm's supervisor "
                                f"({policy.supervisor_user}, uid {policy.supervisor_uid}) and root may")
        return client.port, policy

    @router.post(ROUTE, response_model=LauncherResult, responses={403: ERRORS[403]})
    def run(body: LauncherCall, who: tuple[int, LauncherPolicy] = Depends(caller)) -> LauncherResult:
        uid, pol = who
        outcome = launcher.run(body.argv, pol, workers)
        log.info("worker-launcher (uid %d): %s -> exit %d", uid, shlex.join(body.argv), outcome.code)
        if outcome.code:
            log.info("worker-launcher (uid %d): %s", uid, " | ".join(outcome.output[-3:]))
        return LauncherResult(code=outcome.code, output=outcome.output)

    @router.get(ROUTE + "/check", response_model=LauncherSetup, responses={403: ERRORS[403]})
    def check(who: tuple[int, LauncherPolicy] = Depends(caller)) -> LauncherSetup:
        """``berth-worker-launcher --checksetup``: berth answers, and answers this caller."""
        _, pol = who
        try:
            group = grp.getgrgid(pol.gid).gr_name
        except KeyError:
            group = str(pol.gid)
        return LauncherSetup(supervisor_user=pol.supervisor_user, uid=pol.supervisor_uid, group=group)

    return router
