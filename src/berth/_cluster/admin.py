"""The coordinator identity's administration: create berth's tree, enrol nodes, read the cluster.

``init`` makes the tree readable and writable by the coordinator alone; ``add-node`` gives a node
its own identity and the znodes only that identity (and the coordinator) may touch, in one
transaction, so a node is enrolled completely or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError

from .._core.spec import ID_PATTERN, WorkerSpec, spec_from_mapping
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
    Layout,
    assignment_acl,
    coordinator_only,
    node_dir_acl,
    node_user,
    state_acl,
)
from .zk import UNAVAILABLE, Connection, explain


def _fail(exc: BaseException, path: str, doing: str) -> ClusterError:
    return ClusterError("zk", f"{doing}: {explain(exc, path)}")


def init_cluster(conn: Connection, layout: Layout, cred: Credential) -> list[str]:
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


def add_node(conn: Connection, layout: Layout, coordinator: Credential, node: str, node_digest: str,
             rotate: bool = False) -> None:
    """Enrol ``node`` with the identity whose digest is ``node_digest`` (``node-<name>:<base64>``)."""
    if not ID_PATTERN.fullmatch(node):
        raise ClusterError("node", f"{node!r} is not a node name (2-128 of A-Z a-z 0-9 '_' '.' '-')")
    if not node_digest.startswith(node_user(node) + ":"):
        raise ClusterError("node", f"the identity must be {node_user(node)!r}")
    co = coordinator.digest_id
    record = dump_json({"format": FORMAT, "coordinator": co})
    paths = [layout.node(node), layout.assignment(node), layout.state(node)]
    acls = [node_dir_acl(co, node_digest), assignment_acl(co, node_digest), state_acl(co, node_digest)]
    c = conn.client
    if rotate:
        for path, acl in zip(paths, acls, strict=True):
            try:
                conn.call(c.set_acls_async, path, acl)
            except (NoNodeError, NoAuthError, *UNAVAILABLE) as exc:
                raise _fail(exc, path, f"re-keying {node}") from exc
        return
    t = c.transaction()
    t.create(paths[0], record, acl=acls[0])
    t.create(paths[1], encode_assignment(node, []), acl=acls[1])
    t.create(paths[2], encode_state(NodeState(node=node, updated_at=now())), acl=acls[2])
    try:
        results = t.commit_async().get(timeout=conn.timeout_s)
    except UNAVAILABLE as exc:
        raise _fail(exc, paths[0], f"enrolling {node}") from exc
    for path, res in zip(paths, results, strict=True):
        if isinstance(res, NodeExistsError):
            raise ClusterError("node", f"{node!r} is enrolled already (--rotate gives it a new identity)")
        if isinstance(res, Exception) and type(res).__name__ != "RolledBackError":
            raise _fail(res, path, f"enrolling {node}")


def remove_node(conn: Connection, layout: Layout, node: str) -> None:
    for path in (layout.live(node), layout.state(node), layout.assignment(node), layout.node(node)):
        try:
            conn.call(conn.client.delete_async, path)
        except NoNodeError:
            continue
        except (NoAuthError, *UNAVAILABLE) as exc:
            raise _fail(exc, path, f"removing {node}") from exc


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
    state: NodeState | None = None

    def applied(self) -> bool:
        return self.state is not None and self.doc_version is not None and \
            self.state.applied_version == self.doc_version

    def running(self) -> int:
        ids = {w.worker_id for w in self.workers}
        return sum(1 for w in (self.state.workers if self.state else []) if w.worker_id in ids and w.state == "running")


def read_cluster(conn: Connection, layout: Layout) -> dict[str, NodeView]:
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
                for i, entry in enumerate(decode_assignment(data, n).workers):
                    try:
                        v.workers.append(spec_from_mapping(entry, source=f"workers[{i}]"))
                    except BerthError as exc:
                        v.problems.append(f"{path}: {exc}")
        except ClusterError as exc:
            v.problems.append(f"{path}: {exc}")
    return views
