"""One kazoo client with the settings berth needs, and its connection state as plain data.

kazoo traps this module exists to avoid:

- The state listener runs on kazoo's connection thread: a ZooKeeper call from it blocks that
  thread (and so the call's own answer). The listener here only records the state and wakes the
  owner, which does the work on its own thread.
- kazoo's default connection retry backs off up to an hour between attempts; here the delay is
  bounded (``reconnect_max_delay_s``), so a node rejoins within seconds of the ensemble's return.
- kazoo sends a ping only when it has sent nothing for a while, and notices a silently cut link
  only by an unanswered ping: a client that sends requests all the time may never notice. Callers
  keep requests event-driven (watches) and sparse (state writes rate-limited).
- kazoo does not re-create ephemeral znodes after a session expires: the agent registers again on
  a new session. kazoo drops every watch set by hand when the connection is lost (it hands each a
  ``NONE`` event and re-sends none): berth watches only through kazoo's recipes, which read again
  and watch again by themselves (``watches``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from .._exceptions import ClusterError
from .layout import Credential

log = logging.getLogger("berth.cluster")

UNAVAILABLE = (ConnectionLoss, SessionExpiredError, ConnectionClosedError, OperationTimeoutError, KazooTimeoutError)
"""ZooKeeper could not be asked (not "the answer was no"): the caller keeps what it had and retries."""

CONNECTED, SUSPENDED, LOST = "connected", "suspended", "lost"


@dataclass(frozen=True)
class ConnState:
    state: str
    """connected | suspended (connection lost, session may live) | lost (no session)"""
    session_id: int | None
    since: float
    """time.monotonic() of the last change."""
    expirations: int
    down_since: float | None = None
    """time.monotonic() of when the connection was lost (its creation, if never connected): kept
    while it stays lost, suspended or lost alike; None while connected."""

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED


class Connection:
    """A kazoo client; ``on_change`` is called (from kazoo's thread) after every state change."""

    def __init__(self, hosts: str, cred: Credential, session_timeout_s: float = 10.0,
                 reconnect_max_delay_s: float = 2.0, on_change: Callable[[], None] | None = None,
                 default_acl: list[Any] | None = None, patient: bool = False) -> None:
        if not hosts:
            raise ClusterError("zk", "no ZooKeeper hosts given (--zk, $BERTH_ZK or cluster.zk)")
        self.hosts = hosts
        self._on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._state = ConnState(LOST, None, time.monotonic(), 0, time.monotonic())
        self._ever_connected = False
        self._up = threading.Event()
        self.patient = patient
        """Retry a call cut by a lost connection until the session timeout (the coordinator's
        one-shot commands); the agent is not patient: its loop retries on the next event."""
        self.client = KazooClient(
            hosts=hosts,
            timeout=session_timeout_s,
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_jitter=0.2,
                                        max_delay=reconnect_max_delay_s),
            command_retry=KazooRetry(max_tries=3, delay=0.05, backoff=2, max_delay=1.0),
            auth_data=cred.auth_data(),
            default_acl=default_acl,
        )
        self.timeout_s = session_timeout_s
        self.client.add_listener(self._listener)

    def _listener(self, state: str) -> None:
        # kazoo's connection thread: record and wake the owner; never call ZooKeeper from here.
        with self._lock:
            old = self._state
            expirations = old.expirations
            if state == KazooState.CONNECTED:
                new, session = CONNECTED, self._session_id()
                self._ever_connected = True
            elif state == KazooState.SUSPENDED:
                new, session = SUSPENDED, old.session_id
            else:
                new, session = LOST, None
                if self._ever_connected:
                    expirations += 1
            t = time.monotonic()
            down = None if new == CONNECTED else (old.down_since if old.down_since is not None else t)
            self._state = ConnState(new, session, t, expirations, down)
            (self._up.set if new == CONNECTED else self._up.clear)()
        log.info("ZooKeeper %s (session %s)", new, f"{session:#x}" if session else "-")
        self._on_change()

    def _session_id(self) -> int | None:
        cid = self.client.client_id
        return int(cid[0]) if cid else None

    @property
    def state(self) -> ConnState:
        with self._lock:
            return self._state

    def start(self) -> None:
        """Connect in the background: the caller never blocks on an unreachable ensemble."""
        self.client.start_async()

    def start_and_wait(self, timeout_s: float) -> None:
        try:
            self.client.start(timeout=timeout_s)
        except KazooTimeoutError:
            self.client.stop()
            self.client.close()
            raise ClusterError("zk", f"no ZooKeeper server of {self.hosts} answered within {timeout_s:g}s") from None

    def wait_connected(self, timeout_s: float) -> bool:
        """Until the connection is up, at most ``timeout_s``; whether it is."""
        return self._up.wait(timeout=max(0.0, timeout_s))

    def close(self) -> None:
        try:
            self.client.stop()
            self.client.close()
        except Exception as exc:  # closing is best effort; a dead ensemble must not block shutdown
            log.warning("closing the ZooKeeper client: %s", exc)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One request, bounded in time: ``fn`` is a kazoo ``*_async`` method."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return fn(*args, **kwargs).get(timeout=max(0.1, deadline - time.monotonic()))
            except UNAVAILABLE:
                if not self.patient or time.monotonic() >= deadline:
                    raise
                self.wait_connected(deadline - time.monotonic())


def explain(exc: BaseException, path: str) -> str:
    if isinstance(exc, NoAuthError):
        return f"not allowed to touch {path} with this identity"
    if isinstance(exc, NoNodeError):
        return f"{path} does not exist"
    if isinstance(exc, UNAVAILABLE):
        return f"ZooKeeper unavailable ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"
