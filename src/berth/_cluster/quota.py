"""What berth can close in the ensemble beyond its own tree's ACLs: quotas and the open top.

A node's identity must be allowed to create its ephemeral registration under its own
``nodes/<node>``, and ZooKeeper's CREATE permission cannot say "only this child": without more,
a node (or whoever holds its identity) can create any number of znodes there, and fill the
ensemble. Each node's directory therefore gets a ZooKeeper quota with hard limits (3 znodes: the
directory, ``live`` and ``state``; the bytes of the largest documents berth writes there), which
the servers refuse past when they run with ``enforceQuota=true`` (ZooKeeper 3.7+;
``scripts/zookeeper`` sets it). Quotas live under ``/zookeeper/quota``, in znodes the
coordinator creates with its own ACL, so nobody else can lift them.

ZooKeeper's own ``/``, ``/zookeeper`` and ``/zookeeper/quota`` are open to every client that
authenticates, and digest authentication accepts any made-up identity. On an ensemble that is
berth's alone, ``lock_ensemble`` gives them to the coordinator (every client may still read).
"""

from __future__ import annotations

import contextlib

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError, NotEmptyError, QuotaExceededError
from kazoo.security import ACL, Id, Permissions

from .._exceptions import ClusterError
from .documents import MAX_DOCUMENT_BYTES, MAX_REGISTRATION_BYTES
from .layout import Credential, ZkLayout, coordinator_only, digest
from .zk import UNAVAILABLE, Connection, explain

QUOTA_ROOT = "/zookeeper/quota"
NODE_ZNODES = 3
"""``nodes/<node>`` itself, ``live`` and ``state`` (ZooKeeper counts the quota's own znode)."""
NODE_BYTES = MAX_DOCUMENT_BYTES + MAX_REGISTRATION_BYTES + 4096
"""The state document, the registration and the enrolment record, at their largest."""
OPEN_TOPS = ("/", "/zookeeper", QUOTA_ROOT)
PROBES = 5


def limits(count: int, size: int) -> bytes:
    """A quota's ``zookeeper_limits``: hard limits only (ZooKeeper's StatsTrack format)."""
    return f"count=-1,bytes=-1,countHardLimit={count},byteHardLimit={size}".encode()


def quota_dir(path: str) -> str:
    return QUOTA_ROOT + path


def ensure_quota_base(conn: Connection, layout: ZkLayout, cred: Credential) -> bool:
    """Make ``/zookeeper/quota<root>/nodes`` (the coordinator's); False if this identity may not."""
    acl = coordinator_only(cred.digest_id)
    parts = layout.nodes.strip("/").split("/")
    for i in range(len(parts)):
        path = quota_dir("/" + "/".join(parts[: i + 1]))
        try:
            conn.call(conn.client.create_async, path, b"", acl=acl)
        except NodeExistsError:
            continue
        except NoAuthError:
            return False
    return True


def add_node_quota(conn: Connection, layout: ZkLayout, cred: Credential, node: str) -> None:
    """The quota of ``nodes/<node>`` (made again if missing: e.g. after ``--rotate``)."""
    acl = coordinator_only(cred.digest_id)
    base = quota_dir(layout.node(node))
    with contextlib.suppress(NodeExistsError):
        conn.call(conn.client.create_async, base, b"", acl=acl)
    # limits first, then the stats znode: creating it makes the servers count the subtree
    for name, data in (("zookeeper_limits", limits(NODE_ZNODES, NODE_BYTES)),
                       ("zookeeper_stats", b"count=0,bytes=0")):
        with contextlib.suppress(NodeExistsError):
            conn.call(conn.client.create_async, f"{base}/{name}", data, acl=acl)


def remove_quota(conn: Connection, path: str) -> None:
    """Delete the quota of ``path`` (and any below it), if there is one."""
    for name in ("zookeeper_stats", "zookeeper_limits"):
        with contextlib.suppress(NoNodeError):
            conn.call(conn.client.delete_async, f"{quota_dir(path)}/{name}")
    with contextlib.suppress(NoNodeError, NotEmptyError):
        conn.call(conn.client.delete_async, quota_dir(path))


def quotas_enforced(conn: Connection, layout: ZkLayout, cred: Credential) -> bool | None:
    """Whether the servers refuse a create past a hard quota, tried on a znode of berth's own;
    None when this identity cannot keep quotas (``/zookeeper/quota`` is not writable to it)."""
    if not ensure_quota_base(conn, layout, cred):
        return None
    probe = f"{layout.root}/quota-probe"
    acl = coordinator_only(cred.digest_id)
    try:
        with contextlib.suppress(NodeExistsError):
            conn.call(conn.client.create_async, probe, b"", acl=acl)
        with contextlib.suppress(NodeExistsError):
            conn.call(conn.client.create_async, quota_dir(probe), b"", acl=acl)
        with contextlib.suppress(NodeExistsError):
            conn.call(conn.client.create_async, quota_dir(probe) + "/zookeeper_limits", limits(1, 1 << 20), acl=acl)
        with contextlib.suppress(NodeExistsError):
            conn.call(conn.client.create_async, quota_dir(probe) + "/zookeeper_stats", b"count=0,bytes=0", acl=acl)
        for _ in range(PROBES):  # the leader may check a create before it has applied the stats znode
            try:
                conn.call(conn.client.create_async, probe + "/x", b"", acl=acl)
            except QuotaExceededError:
                return True
            conn.call(conn.client.delete_async, probe + "/x")
        return False
    finally:
        with contextlib.suppress(NoNodeError):
            conn.call(conn.client.delete_async, probe + "/x")
        remove_quota(conn, probe)
        with contextlib.suppress(NoNodeError):
            conn.call(conn.client.delete_async, probe)


def open_tops(conn: Connection) -> list[str]:
    """Which of ``/``, ``/zookeeper``, ``/zookeeper/quota`` any client may write to."""
    out = []
    for path in OPEN_TOPS:
        try:
            acls, _ = conn.call(conn.client.get_acls_async, path)
        except NoAuthError:
            continue
        if any(a.id.scheme == "world" and a.perms & (Permissions.CREATE | Permissions.WRITE | Permissions.DELETE)
               for a in acls):
            out.append(path)
    return out


def lock_ensemble(conn: Connection, cred: Credential) -> list[str]:
    """Give ``/``, ``/zookeeper`` and ``/zookeeper/quota`` to the coordinator where they are open
    (everyone may still read them); returns those it locked."""
    acl = [digest(cred.digest_id, Permissions.ALL), ACL(Permissions.READ, Id("world", "anyone"))]
    locked = []
    for path in open_tops(conn):
        try:
            conn.call(conn.client.set_acls_async, path, acl)
        except (NoAuthError, *UNAVAILABLE) as exc:
            raise ClusterError("zk", f"cannot set the ACL of {path}: {explain(exc, path)}") from exc
        locked.append(path)
    return locked
