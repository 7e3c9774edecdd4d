"""ZooKeeper watches as kazoo's recipes (``DataWatch``, ``ChildrenWatch``), and the wake-up their
owners wait on.

How the recipes behave (tried on the 3-server ensemble, through a relay cut for 1 s and for past
the session timeout; kazoo 2.11):

- A lost connection hands every watch of the client a ``NONE`` event; a ``DataWatch`` reads again
  at once (the request waits in kazoo's queue until the connection is back) and once more when
  the client is ``CONNECTED``. It calls back only when the znode's ``mzxid`` changed meanwhile, or
  the znode came or went: a change made during the cut is delivered once, after it; no change,
  nothing. After a session expiry the same, on the new session, and a ``ChildrenWatch`` lists
  again once ``CONNECTED``. So no watch is ever re-armed by hand, and none is lost with a session.
- Every callback of a client runs on kazoo's one callback thread, and the read after a ``NONE``
  event holds that thread until the connection is back: a callback that blocked would delay every
  other. The callbacks here only record what they were given and wake their owner, whose own
  thread makes every decision; a busy owner never delays a watch, and a watch never blocks the
  owner's loop.
- A recipe's constructor reads at once and retries for ever: it is started on a thread of its own
  (kazoo's ``handler.spawn``), so no loop of berth waits on an unreachable ensemble.
- A read refused by the ZooKeeper ACL (``NoAuthError``) ends a recipe's watch until the next
  reconnection, without telling its owner (kazoo logs it): owners read what they must be sure of
  themselves (the agent reads its document whenever it registers) and keep a retry of their own.
- Returning ``False`` from the callback ends a recipe: a released watch ends at its next change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.protocol.states import ZnodeStat
from kazoo.recipe.watchers import ChildrenWatch, DataWatch
from kazoo.retry import KazooRetry

log = logging.getLogger("berth.cluster")

RETRY_MAX_S = 1.0
"""The longest a recipe sleeps between two tries of a read (kazoo's default grows to 60 s)."""

Deliver = Callable[[bytes | None, ZnodeStat | None], None]
"""Called from kazoo's callback thread with a znode's data and stat (both None: no znode); it
must return at once and never call ZooKeeper."""


class Wakeup:
    """A count of things that happened (watches firing, the connection changing, a signal), and a
    wait for the next one: a waiter that takes ``mark()`` before it looks misses nothing."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seq = 0

    def poke(self, *_: Any) -> None:
        """Count one more thing (any arguments ignored: it serves as a kazoo watch too)."""
        with self._cond:
            self._seq += 1
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return self._seq

    def wait(self, seen: int, seconds: float) -> bool:
        """Until something happens after ``mark()`` gave ``seen``, at most ``seconds``; whether it did."""
        with self._cond:
            return self._cond.wait_for(lambda: self._seq != seen, timeout=max(0.0, seconds))


@dataclass
class _Watch:
    group: str
    deliver: Deliver | None
    wanted: bool = True


class Watches:
    """One client's recipes by path: each started once, each waking ``wake`` when what it watches
    changes (after ``deliver``, if given), until released."""

    def __init__(self, client: KazooClient, wake: Callable[[], None]) -> None:
        self._client = client
        self._wake = wake
        self._lock = threading.Lock()
        self._data: dict[str, _Watch] = {}
        self._children: set[str] = set()

    def data(self, path: str, deliver: Deliver | None = None, group: str = "") -> None:
        """Watch ``path``'s data (it need not exist). Started again with the same path, a watch
        keeps its first ``deliver`` and is wanted again if it was released."""
        with self._lock:
            watch = self._data.get(path)
            if watch is not None:
                watch.wanted = True
                return
            watch = self._data[path] = _Watch(group, deliver)
        self._client.handler.spawn(self._start_data, path, watch)

    def children(self, path: str, deliver: Callable[[list[str]], None] | None = None) -> None:
        """Watch the children of ``path`` (which must exist) for as long as the client lives."""
        with self._lock:
            if path in self._children:
                return
            self._children.add(path)
        self._client.handler.spawn(self._start_children, path, deliver)

    def release(self, group: str, keep: frozenset[str] = frozenset()) -> None:
        """Stop wanting the data watches of ``group`` whose path is not in ``keep``; each ends at its
        next change (kazoo has no other way to end a recipe)."""
        with self._lock:
            for path, watch in self._data.items():
                if watch.group == group and path not in keep:
                    watch.wanted = False

    def watched(self, group: str) -> frozenset[str]:
        with self._lock:
            return frozenset(p for p, w in self._data.items() if w.group == group and w.wanted)

    def _start_data(self, path: str, watch: _Watch) -> None:
        try:
            recipe = DataWatch(self._client, path)
            recipe._retry = self._retry()  # (kazoo's own backs off to 60 s between reads)
            recipe(lambda data, stat: self._on_data(path, watch, data, stat))
        except KazooException as exc:  # the first read refused (ACL): kazoo tries again on reconnection
            log.warning("watching %s: %s", path, type(exc).__name__)

    def _on_data(self, path: str, watch: _Watch, data: bytes | None, stat: ZnodeStat | None) -> bool | None:
        with self._lock:
            if not watch.wanted:
                if self._data.get(path) is watch:
                    del self._data[path]
                return False
        if watch.deliver is not None:
            watch.deliver(data, stat)
        self._wake()
        return None

    def _retry(self) -> KazooRetry:
        """A recipe's read after a lost connection holds kazoo's one callback thread until it is
        answered, and ``client.stop`` waits for that thread: between two tries it sleeps at most
        ``RETRY_MAX_S``, so no watch sleeps long past the reconnection and closing never waits long."""
        return KazooRetry(max_tries=None, max_delay=RETRY_MAX_S, sleep_func=self._client.handler.sleep_func)

    def _start_children(self, path: str, deliver: Callable[[list[str]], None] | None) -> None:
        def on_children(children: list[str]) -> None:
            if deliver is not None:
                deliver(children)
            self._wake()

        try:
            ChildrenWatch(self._client, path, on_children)
        except KazooException as exc:
            log.warning("watching the children of %s: %s", path, type(exc).__name__)
            with self._lock:
                self._children.discard(path)
