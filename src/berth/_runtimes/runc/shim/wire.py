"""The shim's side of its socket: newline-delimited JSON in and out, never blocking the loop.

A client that stops reading has its replies buffered up to ``MAX_OUTBUF``, then is dropped: one
stuck berth process cannot stall the monitor of every other worker (a dropped subscriber gets
every unacknowledged exit again when it comes back).
"""

from __future__ import annotations

import json
import selectors
import socket
from typing import Any

MAX_LINE = 1 << 20
MAX_OUTBUF = 16 << 20


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.subscribed = False


class Wire:
    """Connections of the shim's selector; ``_handle`` is the monitor's."""

    sel: selectors.BaseSelector
    listen: socket.socket
    conns: dict[int, Conn]

    def _handle(self, conn: Conn, req: dict[str, Any]) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            conn = Conn(sock)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        while b"\n" in conn.inbuf:
            line, conn.inbuf = conn.inbuf.split(b"\n", 1)
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self._send(conn, {"ok": False, "error": f"bad request: {exc}"})
                continue
            try:
                self._handle(conn, req)
            except (OSError, KeyError, TypeError, ValueError) as exc:
                self._send(conn, {"ok": False, "error": f"{req.get('op')}: {exc}"})
        if len(conn.inbuf) > MAX_LINE:
            self._close(conn)

    def _send(self, conn: Conn, obj: dict[str, Any]) -> None:
        if conn.sock.fileno() not in self.conns:
            return
        conn.outbuf += json.dumps(obj).encode() + b"\n"
        if len(conn.outbuf) > MAX_OUTBUF:
            self._close(conn)  # a subscriber that stopped reading; it gets everything again on return
            return
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            while conn.outbuf:
                n = conn.sock.send(conn.outbuf)
                conn.outbuf = conn.outbuf[n:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        self.sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0))

    def _close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if fd in self.conns:
            del self.conns[fd]
            self.sel.unregister(conn.sock)
        conn.sock.close()
