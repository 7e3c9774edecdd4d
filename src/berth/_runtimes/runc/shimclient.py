"""berth's side of the shim: start it on demand, ask it things, follow its exit events.

One short connection per request (a unix-socket connect costs microseconds), and one
long-lived connection for the event stream, which acknowledges each exit only once the caller
has taken it (the node journals an exit before asking for the next one).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..._exceptions import EngineError, ShimError, WaitTimeout
from .shim import LOCK_NAME, SOCKET_NAME, VERSION
from .shim.argv import command

MAX_SOCKET_PATH = 107
RETRY_S = 0.05
"""Between attempts while the shim re-executes itself (it is back within milliseconds)."""


class _Again(ShimError):
    """No answer, or "try again": the shim is re-executing itself (or was just started)."""


class ShimClient:
    def __init__(self, base: str, runc: str, root: str) -> None:
        self.base, self.runc, self.root = base, runc, root
        self.socket_path = os.path.join(base, SOCKET_NAME)
        if len(self.socket_path.encode()) > MAX_SOCKET_PATH:
            raise EngineError("node.state_dir", f"{self.socket_path} is longer than a unix socket path may be "
                              f"({MAX_SOCKET_PATH} bytes); choose a shorter state_dir")
        self._start_lock = threading.Lock()
        self._closed = threading.Event()
        self._stream: socket.socket | None = None
        self._subscribed_once = False

    # -- starting and stopping --------------------------------------------------------------------

    def _connect(self, timeout: float | None) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(timeout)
        try:
            s.connect(self.socket_path)
        except OSError:
            s.close()
            raise
        return s

    def running(self) -> bool:
        try:
            self._connect(5).close()
        except OSError:
            return False
        return True

    def start(self, create: bool = True) -> int:
        """Start the shim unless one runs; returns its pid. Detached: its own session and cgroup,
        and not berth's child (the process berth starts forks it and exits at once). Without
        ``create``, a state directory that is gone (the node was removed) is not made again."""
        with self._start_lock:
            if not create and not os.path.isdir(self.base):
                raise ShimError("shim", f"{self.base} is gone; not starting a shim for it")
            os.makedirs(self.base, mode=0o700, exist_ok=True)
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            r, w = os.pipe()
            log = os.open(os.path.join(self.base, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                          0o600)
            try:
                argv = [*command(self.base, self.runc, self.root), "--daemon", "--ready-fd", str(w)]
                starter = subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           start_new_session=True, cwd="/")
            except OSError as exc:
                os.close(r)
                raise ShimError("shim", f"cannot start berth-shim: {exc}") from exc
            finally:
                os.close(w)
                os.close(log)
            with os.fdopen(r, "rb") as fh:
                said = fh.read(4096).decode(errors="replace").strip()
            starter.wait()  # the intermediate process, which exits as soon as it has forked
        word, _, rest = said.partition(" ")
        if word in ("ready", "running") and rest.strip().isdigit():
            return int(rest)
        raise ShimError("shim", f"berth-shim did not start: {said or 'no word from it'} "
                        f"(see {os.path.join(self.base, 'shim.log')})")

    def ensure(self, create: bool = True) -> None:
        if not self.running():
            self.start(create)

    def pid(self) -> int | None:
        """The pid in the lock file of a running shim, None when none runs."""
        if not self.running():
            return None
        try:
            with open(os.path.join(self.base, LOCK_NAME), encoding="ascii") as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            return None

    # -- requests ---------------------------------------------------------------------------------

    def request(self, req: dict[str, Any], timeout: float = 30.0, start: bool = True) -> dict[str, Any]:
        """Send ``req`` and return the reply. A shim re-executing itself (``upgrade``) refuses
        new launches and drops its connections; the request is then sent again to the new program,
        until ``timeout``. Every request is safe to repeat: a launch of a container that runs is
        refused, a kill or remove finds it (or its exit) again, and a grace period already promised
        is kept by the shim, not restarted."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._ask(req, max(1.0, deadline - time.monotonic()), start)
            except _Again:
                if time.monotonic() >= deadline or self._closed.is_set():
                    raise
                self._closed.wait(RETRY_S)
                continue
            if not reply.get("ok"):
                raise ShimError("shim", str(reply.get("error") or reply))
            return reply

    def _ask(self, req: dict[str, Any], timeout: float, start: bool) -> dict[str, Any]:
        """One attempt; ``_Again`` when it is worth another (no answer yet, or "try again")."""
        op = req.get("op")
        try:
            s = self._connect(timeout)
        except OSError as exc:
            if not start:
                raise ShimError("shim", f"no berth-shim answers at {self.socket_path}: {exc.strerror}") from exc
            self.ensure()
            try:
                s = self._connect(timeout)
            except OSError as exc2:
                raise _Again("shim", f"berth-shim does not answer at {self.socket_path}: {exc2.strerror}") from exc2
        with s:
            try:
                s.sendall(json.dumps(req).encode() + b"\n")
                reply = _read_line(s)
            except TimeoutError:
                raise WaitTimeout("shim", f"berth-shim did not answer {op!r} within {timeout:g}s") from None
            except OSError as exc:
                raise _Again("shim", f"{op}: the connection to berth-shim broke: {exc}") from exc
        if reply is None:
            raise _Again("shim", f"{op}: berth-shim closed the connection (restarting?)")
        if not reply.get("ok") and reply.get("retry"):
            raise _Again("shim", f"{op}: {reply.get('error')}")
        return reply

    def hello(self, start: bool = False) -> dict[str, Any]:
        return self.request({"op": "hello"}, timeout=10, start=start)

    def stop(self, force: bool = False) -> dict[str, Any]:
        return self.request({"op": "stop", "force": force}, start=False)

    def upgrade(self) -> dict[str, Any]:
        return self.request({"op": "upgrade"}, start=False)

    # -- the event stream -------------------------------------------------------------------------

    def events(self) -> Iterator[dict[str, Any] | None]:
        """``None`` once subscribed, then each exit event; the previous event is acknowledged when
        the next one is asked for. Ends on a broken connection (the caller reconnects; a shim that
        is gone is started again, unless its whole state directory went with it)."""
        self.ensure(create=not self._subscribed_once)
        self._subscribed_once = True
        s = self._connect(None)
        self._stream = s
        try:
            s.sendall(b'{"op": "subscribe"}\n')
            reader = s.makefile("rb")
            first = reader.readline(1 << 20)
            if not first or not json.loads(first).get("ok"):
                return
            yield None
            while not self._closed.is_set():
                line = reader.readline(1 << 20)
                if not line:
                    return
                ev = json.loads(line)
                if ev.get("event") != "exit":
                    continue
                yield ev
                s.sendall(json.dumps({"op": "ack", "id": ev["id"]}).encode() + b"\n")
        except (OSError, ValueError):
            return
        finally:
            self._stream = None
            s.close()

    def close(self) -> None:
        self._closed.set()
        s = self._stream
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _read_line(s: socket.socket) -> dict[str, Any] | None:
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    data = json.loads(buf.split(b"\n", 1)[0])
    return data if isinstance(data, dict) else None


__all__ = ["VERSION", "ShimClient", "ShimError"]
