"""The worker-launcher's routes: ``berth-worker-launcher`` (run by Storm's supervisor in place of
Storm's setuid ``worker-launcher``) posts its argv here and prints what comes back.

Only Storm's supervisor may ask: the route reads the caller's uid from the kernel
(``SO_PEERCRED`` on the unix socket, ``peer``) and answers only ``launcher.supervisor_user``'s.
Over TCP, or with the launcher not configured, every call is refused. A worker cannot reach the
socket at all (berth refuses a socket under any tree a worker sees).
"""

from __future__ import annotations

import grp
import logging
import shlex

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from .._node import launcher
from .._node.launcher import LauncherPolicy, Workers
from .._node.node import Node
from .apimodels import ERRORS
from .peer import Peer, peer_of

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


def launcher_router(node: Node, policy: LauncherPolicy | None) -> APIRouter:
    """The routes, for ``node``'s workers under ``policy`` (None: the launcher is not configured)."""
    router = APIRouter()
    workers = Workers(running=lambda: [w for w in node.ps(detail=True) if w.running], exec_in=node.exec)

    def caller(request: Request) -> tuple[Peer, LauncherPolicy]:
        if policy is None:
            raise HTTPException(403, "the worker-launcher is not enabled on this node: set launcher.supervisor_user "
                                "(berth.worker-launcher.supervisor.user in a storm.yaml) to the user Storm's "
                                "supervisor runs as")
        peer = peer_of(request)
        if peer is None:
            raise HTTPException(403, "the worker-launcher answers only on berth's unix socket")
        if peer.uid != policy.supervisor_uid:
            log.warning("worker-launcher: refused a call from uid %d (pid %d)", peer.uid, peer.pid)
            raise HTTPException(403, f"uid {peer.uid} may not use the worker-launcher: only Storm's supervisor "
                                f"({policy.supervisor_user}, uid {policy.supervisor_uid}) may")
        return peer, policy

    @router.post(ROUTE, response_model=LauncherResult, responses={403: ERRORS[403]})
    def run(body: LauncherCall, who: tuple[Peer, LauncherPolicy] = Depends(caller)) -> LauncherResult:
        peer, pol = who
        outcome = launcher.run(body.argv, pol, workers)
        log.info("worker-launcher (pid %d): %s -> exit %d", peer.pid, shlex.join(body.argv), outcome.code)
        if outcome.code:
            log.info("worker-launcher (pid %d): %s", peer.pid, " | ".join(outcome.output[-3:]))
        return LauncherResult(code=outcome.code, output=outcome.output)

    @router.get(ROUTE + "/check", response_model=LauncherSetup, responses={403: ERRORS[403]})
    def check(who: tuple[Peer, LauncherPolicy] = Depends(caller)) -> LauncherSetup:
        """``berth-worker-launcher --checksetup``: berth answers, and answers this caller."""
        _, pol = who
        try:
            group = grp.getgrgid(pol.gid).gr_name
        except KeyError:
            group = str(pol.gid)
        return LauncherSetup(supervisor_user=pol.supervisor_user, uid=pol.supervisor_uid, group=group)

    return router
