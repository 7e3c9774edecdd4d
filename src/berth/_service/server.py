"""Running the API under uvicorn, on a unix socket or one TCP listener, until SIGINT/SIGTERM.

The node's lock is held (taken here if the supervisor has not started yet), so a socket left at
the path is a dead supervisor's and may be replaced; the socket is removed again on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from .._core.serviceconfig import TenantToken
from .api import create_app
from .stormnode import StormService
from .supervisor import Supervisor


def serve(sup: Supervisor | StormService, socket_path: str | None, tcp: str | None, token: str | None,
          socket_mode: int = 0o660, socket_group: str | None = None, *, tenants: tuple[TenantToken, ...] = (),
          read_only: bool = False, announce: Callable[[str], None] | None = None, app: Any = None,
          protocol: type | None = None, stopping: Callable[[], None] | None = None) -> None:
    """Serve until a signal; ``announce`` gets "unix:PATH" or "http://HOST:PORT" once bound;
    ``app`` is a prepared app (the cluster agent's, storm mode's), else the supervisor's own;
    ``protocol``: uvicorn's HTTP protocol class on the unix socket (storm mode's knows its peer);
    ``stopping`` runs when the stop signal comes, before uvicorn waits for the requests under way
    (storm mode answers its long polls then)."""
    import uvicorn

    # Whoever answers on the node's socket holds the node's lock (the cluster agent may serve
    # before its first document starts the supervisor); a second one fails here, socket untouched.
    sup.lock.acquire(node=sup.config.node.name, state_dir=sup.config.state_dir)
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down; a no-op handler underneath lets the
    # caller finish its own shutdown (leave workers running, or drain them) instead of dying.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if tcp:
        host, _, port = tcp.rpartition(":")
        host = host or "127.0.0.1"
        assert isinstance(sup, Supervisor)
        app = app or create_app(sup, token=token, tenants=tenants, read_only=read_only)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=int(port), log_level="warning"))
        _after_bind(server, lambda: announce(f"http://{host}:{port}") if announce else None)
        server.run()
        return
    assert socket_path is not None
    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    if os.path.lexists(socket_path):
        os.unlink(socket_path)  # a dead supervisor's: the lock says no live one uses it
    if app is None:
        assert isinstance(sup, Supervisor)
        app = create_app(sup, read_only=read_only)
    server = uvicorn.Server(uvicorn.Config(app, uds=socket_path, log_level="warning", http=protocol or "auto"))
    mine: list[tuple[int, int]] = []
    previous = os.umask(0o177)  # the socket is born owner-only, then opened up to its mode

    def bound() -> None:
        # Only the socket needs the strict umask; it is process-wide, and whatever berth makes
        # from now on (worker roots, runc mount points, state files) must not inherit it.
        os.umask(previous)
        st = os.stat(socket_path)
        mine.append((st.st_dev, st.st_ino))  # removed on the way out, whatever fails below
        if socket_group:  # the group first, then the mode that opens the socket to it
            import grp

            os.chown(socket_path, -1, grp.getgrnam(socket_group).gr_gid)
        os.chmod(socket_path, socket_mode)
        if announce:
            announce(f"unix:{socket_path}")

    _after_bind(server, bound)
    if stopping is not None:
        _on_stop(server, stopping)
    try:
        server.run()
    finally:
        os.umask(previous)
        with contextlib.suppress(OSError):
            st = os.stat(socket_path)
            if (st.st_dev, st.st_ino) in mine:
                os.unlink(socket_path)


def _on_stop(server: Any, then: Callable[[], None]) -> None:
    """Run ``then`` when uvicorn is told to stop (its signal handler), before it drains."""
    handle = server.handle_exit

    def handle_then(sig: int, frame: Any) -> None:
        then()
        handle(sig, frame)

    server.handle_exit = handle_then


def _after_bind(server: Any, then: Callable[[], None]) -> None:
    """Run ``then`` as soon as uvicorn has bound its listener (before it serves a request)."""
    startup = server.startup

    async def startup_then(*args: Any, **kwargs: Any) -> None:
        await startup(*args, **kwargs)
        then()

    server.startup = startup_then
