"""The coordinator identity's administration: create berth's tree, enrol nodes, read the cluster.

``init`` makes the tree readable and writable by the coordinator alone; ``add-node`` gives a node
its own identity and the znodes only that identity (and the coordinator) may touch, in one
transaction, so a node is enrolled completely or not at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError, NotEmptyError

from .._core.spec import ID_PATTERN, WorkerSpec, spec_digest, spec_from_mapping
from .._exceptions import BerthError, ClusterError
from .documents import (
    FORMAT,
    NodeState,
    Registration,
    decode_assignment,
    decode_registration,
    decode_state,
    dump_json,
    encode_assignment,
    encode_state,
    now,
    version_of,
)
from .layout import (
    Credential,
    ZkLayout,
    assignment_acl,
    coordinator_only,
    node_dir_acl,
    node_user,
    state_acl,
)
from .quota import NODE_BYTES, NODE_ZNODES, QUOTA_ROOT, add_node_quota, ensure_quota_base, limits, quota_dir
from .zk import UNAVAILABLE, Connection, explain

REMOVE_TRIES = 5
IMPOSSIBLE_VERSION = 2**31 - 1


def _fail(exc: BaseException, path: str, doing: str) -> ClusterError:
    return ClusterError("zk", f"{doing}: {explain(exc, path)}")


def init_cluster(conn: Connection, layout: ZkLayout, cred: Credential) -> list[str]:
    """Create the tree (coordinator only); refuse a tree that anyone else can touch."""
    c, made = conn.client, []
    acl = coordinator_only(cred.digest_id)
    parts = layout.root.strip("/").split("/")
    paths = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
    for path in [*paths, layout.nodes, layout.assignments, layout.schedule]:
        try:
            conn.call(c.create_async, path, b"", acl=acl)
            made.append(path)
        except NodeExistsError:
            if path in paths[:-1]:
                continue  # a parent of the root may be shared with other applications
            _check_owned(conn, path)
        except (NoAuthError, *UNAVAILABLE) as exc:
            raise _fail(exc, path, f"creating {path}") from exc
    return made


def _check_owned(conn: Connection, path: str) -> None:
    try:
        acls, _ = conn.call(conn.client.get_acls_async, path)
    except (NoAuthError, *UNAVAILABLE) as exc:
        raise ClusterError("zk", f"{path} exists and this identity cannot read its ACL ({explain(exc, path)}): "
                                 "it belongs to someone else") from exc
    open_to = [f"{a.id.scheme}:{a.id.id}" for a in acls if a.id.scheme in ("world", "ip", "auth")]
    if open_to:
        raise ClusterError("zk", f"{path} exists with an ACL open to {', '.join(open_to)}; refusing to use it")


def add_node(conn: Connection, layout: ZkLayout, coordinator: Credential, node: str, node_digest: str,
             rotate: bool = False) -> list[str]:
    """Enrol ``node`` with the identity whose digest is ``node_digest`` (``node-<name>:<base64>``),
    its directory bounded by a quota (``quota``); returns notes for the operator."""
    if not ID_PATTERN.fullmatch(node):
        raise ClusterError("node", f"{node!r} is not a node name (2-128 of A-Z a-z 0-9 '_' '.' '-')")
    if not node_digest.startswith(node_user(node) + ":"):
        raise ClusterError("node", f"the identity must be {node_user(node)!r}")
    co = coordinator.digest_id
    record = dump_json({"format": FORMAT, "coordinator": co})
    paths = [layout.node(node), layout.assignment(node), layout.state(node)]
    acls = [node_dir_acl(co, node_digest), assignment_acl(co, node_digest), state_acl(co, node_digest)]
    c = conn.client
    try:
        bounded = ensure_quota_base(conn, layout, coordinator)
    except UNAVAILABLE as exc:
        raise _fail(exc, quota_dir(layout.nodes), f"enrolling {node}") from exc
    notes = [] if bounded else [f"{QUOTA_ROOT} is not writable by this identity: {layout.node(node)} has no quota, "
                                "so the node's identity can create any number of znodes under it (docs/cluster.md)"]
    if rotate:
        for path, acl in zip(paths, acls, strict=True):
            try:
                conn.call(c.set_acls_async, path, acl)
            except (NoNodeError, NoAuthError, *UNAVAILABLE) as exc:
                raise _fail(exc, path, f"re-keying {node}") from exc
        if bounded:
            add_node_quota(conn, layout, coordinator, node)
        return notes
    t = c.transaction()
    t.create(paths[0], record, acl=acls[0])
    t.create(paths[1], encode_assignment(node, []), acl=acls[1])
    t.create(paths[2], encode_state(NodeState(node=node, updated_at=now())), acl=acls[2])
    if bounded:  # limits before stats: creating the stats znode makes the servers count the subtree
        quota = quota_dir(layout.node(node))
        t.create(quota, b"", acl=coordinator_only(co))
        t.create(f"{quota}/zookeeper_limits", limits(NODE_ZNODES, NODE_BYTES), acl=coordinator_only(co))
        t.create(f"{quota}/zookeeper_stats", b"count=0,bytes=0", acl=coordinator_only(co))
        paths += [quota, f"{quota}/zookeeper_limits", f"{quota}/zookeeper_stats"]
    try:
        results = t.commit_async().get(timeout=conn.timeout_s)
    except UNAVAILABLE as exc:
        raise _fail(exc, paths[0], f"enrolling {node}") from exc
    for path, res in zip(paths, results, strict=True):
        if isinstance(res, NodeExistsError) and not path.startswith(QUOTA_ROOT):
            raise ClusterError("node", f"{node!r} is enrolled already (--rotate gives it a new identity)")
        if isinstance(res, NodeExistsError):
            raise ClusterError("node", f"{path} exists already (a quota left behind?); remove it first")
        if isinstance(res, Exception) and type(res).__name__ != "RolledBackError":
            raise _fail(res, path, f"enrolling {node}")
    return notes


def remove_node(conn: Connection, layout: ZkLayout, node: str) -> None:
    """Delete the node's znodes, whatever its identity made in its directory, and its quota, in
    one transaction: all of it, or nothing and the reason."""
    for _ in range(REMOVE_TRIES):
        paths = removal_paths(conn, layout, node)
        if not paths:
            return
        t = conn.client.transaction()
        for path in paths:
            t.delete(path)
        try:
            results = t.commit_async().get(timeout=conn.timeout_s)
        except UNAVAILABLE as exc:
            raise _fail(exc, layout.node(node), f"removing {node}") from exc
        failed = [(p, r) for p, r in zip(paths, results, strict=False)
                  if isinstance(r, Exception) and type(r).__name__ != "RolledBackError"]
        if not failed:
            return
        path, err = failed[0]
        if isinstance(err, NotEmptyError) and "live" in _children(conn, layout.node(node)):
            raise ClusterError("node", f"{node} registered again while it was being removed: its agent runs "
                                       "(stop it first, or remove-node --drain); nothing was removed")
        if not isinstance(err, NoNodeError | NotEmptyError):  # those: changed meanwhile, look again
            raise _fail(err, path, f"removing {node}")
    raise ClusterError("node", f"{layout.node(node)} kept changing while being removed; nothing was removed")


def removal_paths(conn: Connection, layout: ZkLayout, node: str) -> list[str]:
    """Every znode removing ``node`` deletes, children first; a ``ClusterError`` naming the one
    that cannot be deleted (the node's identity gave it children), before anything changes."""
    made, unread = [], []
    for child in _children(conn, layout.node(node)):
        path = f"{layout.node(node)}/{child}"
        made.append(path)
        try:
            below = _children(conn, path)
        except ClusterError:
            unread.append(path)  # under an ACL of the node's own: a leaf can still be deleted unread
            continue
        if below:
            raise ClusterError("node", f"cannot remove {path}: the node's identity gave it children "
                                       f"({', '.join(sorted(below)[:5])}); remove them first")
    stuck = _undeletable(conn, unread, layout.node(node))
    if stuck is not None:
        raise ClusterError("node", f"cannot remove {stuck}: the node's identity gave it children this identity "
                                   "cannot see; remove them with that identity (or a ZooKeeper superuser)")
    quota = quota_dir(layout.node(node))
    stats = [f"{quota}/{n}" for n in _children(conn, quota) if n in ("zookeeper_stats", "zookeeper_limits")]
    others = [p for p in (layout.state(node), layout.assignment(node), layout.node(node), *sorted(stats), quota)
              if p not in made and _exists(conn, p)]
    if quota in others and set(_children(conn, quota)) - {"zookeeper_stats", "zookeeper_limits"}:
        others.remove(quota)  # quotas of paths below it: not the node's own
    return [*made, *others]


def _undeletable(conn: Connection, paths: list[str], parent: str) -> str | None:
    """The first of ``paths`` that cannot be deleted, tried in a transaction made to fail at its
    end (a check of an impossible version), so that nothing is deleted whatever the answer."""
    if not paths:
        return None
    t = conn.client.transaction()
    for path in paths:
        t.delete(path)
    t.check(parent, IMPOSSIBLE_VERSION)
    try:
        results = t.commit_async().get(timeout=conn.timeout_s)
    except UNAVAILABLE as exc:
        raise _fail(exc, parent, f"looking at {parent}") from exc
    return next((p for p, r in zip(paths, results, strict=False) if isinstance(r, NotEmptyError | NoAuthError)), None)


def _children(conn: Connection, path: str) -> list[str]:
    try:
        return list(conn.call(conn.client.get_children_async, path))
    except NoNodeError:
        return []
    except (NoAuthError, *UNAVAILABLE) as exc:
        raise _fail(exc, path, f"listing {path}") from exc


def _exists(conn: Connection, path: str) -> bool:
    try:
        return conn.call(conn.client.exists_async, path) is not None
    except UNAVAILABLE as exc:
        raise _fail(exc, path, f"looking at {path}") from exc


def remove_cluster(conn: Connection, layout: ZkLayout) -> None:
    """Delete berth's whole tree and its quotas (the demo's and the tests' clean-up)."""
    with contextlib.suppress(NoNodeError):
        for node in conn.call(conn.client.get_children_async, layout.nodes):
            remove_node(conn, layout, node)  # what nodes made there may be unreadable to a recursive delete
    for path in (layout.root, quota_dir(layout.root)):
        with contextlib.suppress(NoNodeError):
            conn.client.delete(path, recursive=True)


# -- reading the cluster ---------------------------------------------------------------------

@dataclass
class NodeView:
    name: str
    live: Registration | None = None
    live_session: int | None = None
    problems: list[str] = field(default_factory=list)
    workers: list[WorkerSpec] = field(default_factory=list)
    doc_version: str | None = None
    doc_stat_version: int | None = None
    """The znode's data version, for the transaction's version check."""
    doc_dead_after_s: float | None = None
    doc_damaged: bool = False
    """The document itself could not be used whole (the coordinator writes it again)."""
    state: NodeState | None = None

    def applied(self) -> bool:
        return self.state is not None and self.doc_version is not None and \
            self.state.applied_version == self.doc_version

    def ready(self) -> frozenset[str]:
        """The workers of the document that the node, live, reports running from the document's spec."""
        if self.live is None or self.state is None:
            return frozenset()
        digests = {w.worker_id: w.digest for w in self.state.workers if w.state == "running"}
        return frozenset(w.worker_id for w in self.workers if digests.get(w.worker_id) == spec_digest(w))

    def running(self) -> int:
        ids = {w.worker_id for w in self.workers}
        return sum(1 for w in (self.state.workers if self.state else []) if w.worker_id in ids and w.state == "running")


def read_cluster(conn: Connection, layout: ZkLayout) -> dict[str, NodeView]:
    """Every enrolled node with its registration, document and report (requests sent in parallel)."""
    c = conn.client
    try:
        names = sorted(conn.call(c.get_children_async, layout.nodes))
    except (NoNodeError, NoAuthError, *UNAVAILABLE) as exc:
        raise _fail(exc, layout.nodes, "listing nodes") from exc
    pending: dict[tuple[str, str], Any] = {}
    for n in names:
        for kind, path in (("live", layout.live(n)), ("doc", layout.assignment(n)), ("state", layout.state(n))):
            pending[(n, kind)] = (path, c.get_async(path))
    views = {n: NodeView(n) for n in names}
    for (n, kind), (path, result) in pending.items():
        v = views[n]
        try:
            data, stat = result.get(timeout=conn.timeout_s)
        except NoNodeError:
            if kind != "live":
                v.problems.append(f"{path} is missing")
            continue
        except (NoAuthError, *UNAVAILABLE) as exc:
            if isinstance(exc, UNAVAILABLE):
                raise _fail(exc, path, "reading the cluster") from exc
            v.problems.append(explain(exc, path))
            continue
        try:
            if kind == "live":
                v.live, v.live_session = decode_registration(data, n), stat.ephemeralOwner
            elif kind == "state":
                v.state = decode_state(data, n)
            else:
                v.doc_version, v.doc_stat_version = version_of(stat.mzxid), stat.version
                doc = decode_assignment(data, n)
                v.doc_dead_after_s = doc.dead_after_s
                for i, entry in enumerate(doc.workers):
                    try:
                        v.workers.append(spec_from_mapping(entry, source=f"workers[{i}]"))
                    except BerthError as exc:
                        v.problems.append(f"{path}: {exc}")
                        v.doc_damaged = True
        except ClusterError as exc:
            v.problems.append(f"{path}: {exc}")
            v.doc_damaged = v.doc_damaged or kind == "doc"
    return views
