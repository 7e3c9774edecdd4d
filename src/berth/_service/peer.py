"""Who is at the other end of the API's unix socket, from the kernel (``SO_PEERCRED``).

The socket's mode and group decide who can connect at all; some routes need more, the uid of
one program (Storm's supervisor, for the worker-launcher's commands). The kernel records the
connecting process's pid, uid and gid when it connects, and no caller can claim another's. uvicorn
does not hand the transport to the app, so the HTTP protocol is subclassed to read the
credentials once per connection and to put them in the ASGI scope's ``state`` of each request.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

PEER_KEY = "berth.peer"


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(request: Request) -> Peer | None:
    """The connecting process's credentials; None over TCP (or where no protocol recorded them)."""
    found = request.scope.get("state", {}).get(PEER_KEY)
    return found if isinstance(found, Peer) else None


class PeerCredProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer's credentials in every request's ``scope["state"]``."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer = Peer(*struct.unpack("3i", raw))
        # The app's state is shared by every connection: each gets its own copy holding its peer.
        self.app_state = {**self.app_state, PEER_KEY: peer}
