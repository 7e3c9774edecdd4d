"""The node's registration: its ephemeral ``live`` znode, which is its lease on the node's name.

kazoo does not re-create ephemeral znodes on a new session: the agent's state machine asks for a
registration after every new session (and whenever the watch on ``live`` sees it gone), and one
attempt here says how it went, as an event for that machine. A registration left by a previous
agent process of this node (same host and boot, that pid gone) is replaced at once; one held by
another live agent is waited for (and reported), never stolen.
"""

from __future__ import annotations

import contextlib
import logging

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError

from .._exceptions import ClusterError
from .._version import __version__
from .agentstate import Event, Refused, Registered, RegisterPostponed
from .capacity import Capacity
from .documents import (
    Registration,
    coordinator_of,
    decode_registration,
    encode_registration,
    now,
    process_start,
    this_process,
)
from .layout import ZkLayout, live_acl
from .zk import UNAVAILABLE, Connection, explain

log = logging.getLogger("berth.agent")

RETRY_S = 1.0
"""How soon a registration or read that ZooKeeper did not answer is tried again (never a busy loop)."""
REFUSED_RETRY_S = 10.0
"""How soon one refused for a reason only the operator can fix is tried again (a watch may wake it sooner)."""


class Registrar:
    def __init__(self, conn: Connection, layout: ZkLayout, node: str, user: str, capacity: Capacity) -> None:
        self.conn = conn
        self.layout = layout
        self.node = node
        self.user = user
        self.capacity = capacity
        self.coordinator: str | None = None
        """The coordinator's digest identity, read from the node's directory once (the ACLs name it)."""
        self.made = 0
        """Registrations made (a new session needs one)."""
        self._me = this_process()

    def register(self, session: int, at: float) -> Event:
        """One attempt in ``session`` (``at``: now, monotonic): made (or found made, by this session),
        refused for now, or postponed."""
        conn, path = self.conn, self.layout.live(self.node)
        try:
            if self.coordinator is None:
                data, _ = conn.call(conn.client.get_async, self.layout.node(self.node))
                self.coordinator = coordinator_of(data)
            body = self._body()
            try:
                conn.call(conn.client.create_async, path, body, acl=live_acl(self.coordinator), ephemeral=True)
            except NodeExistsError:
                outcome = self._existing(path, session, at)
                if outcome is not None:
                    return outcome
                conn.call(conn.client.create_async, path, body, acl=live_acl(self.coordinator), ephemeral=True)
        except NoNodeError:
            return Refused(f"node {self.node!r} is not enrolled (berth cluster add-node {self.node})",
                           at + REFUSED_RETRY_S)
        except NoAuthError:
            return Refused(f"ZooKeeper refused identity {self.user!r} for node {self.node!r}: wrong credential, "
                           "or the node was enrolled with another one", at + REFUSED_RETRY_S)
        except (*UNAVAILABLE, NodeExistsError) as exc:
            log.info("registration postponed: %s", explain(exc, path))
            return RegisterPostponed(at + RETRY_S)
        except ClusterError as exc:
            return Refused(str(exc), at + REFUSED_RETRY_S)
        self.made += 1
        log.info("registered %s (session %#x)", path, session)
        return Registered(session)

    def _existing(self, path: str, session: int, at: float) -> Event | None:
        """A ``live`` znode exists: this session's (a create retried after a lost answer, or a
        check), a dead process's (removed: None, create it), or another agent's."""
        conn = self.conn
        data, stat = conn.call(conn.client.get_async, path)
        if stat.ephemeralOwner == session:
            return Registered(session)
        try:
            other = decode_registration(data, self.node)
        except ClusterError:
            other = None
        host, _pid, _start, boot = self._me
        if other is not None and other.host == host and other.boot_id == boot and \
                process_start(other.pid) != other.pid_start:
            log.info("removing the registration of a previous agent of this node (pid %d is gone)", other.pid)
            with contextlib.suppress(NoNodeError):
                conn.call(conn.client.delete_async, path, version=stat.version)
            return None
        who = f"pid {other.pid} on {other.host}" if other else "an unknown agent"
        return Refused(f"node {self.node!r} is registered by {who} (session {stat.ephemeralOwner:#x}); "
                       "waiting for that registration to end", at + REFUSED_RETRY_S)

    def _body(self) -> bytes:
        host, pid, start, boot = self._me
        return encode_registration(Registration(node=self.node, berth_version=__version__, host=host, pid=pid,
                                                pid_start=start, boot_id=boot, started_at=now(),
                                                capacity=self.capacity))
