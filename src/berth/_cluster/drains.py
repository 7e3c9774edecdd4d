"""The nodes being drained (``berth cluster remove-node --drain``): ``<root>/schedule/drain``.

Coordinator-only, like the rest of ``schedule/``: ``{"format": 1, "nodes": {"<node>": phase}}``.
While a node is ``moving``, every pass keeps its workers in its document (they run on) but no
longer counts them for their topologies, so they get replacements on other nodes, and places
nothing new there; once ``stopping``, its document is emptied and its agent stops its own. The
marker is kept in ZooKeeper, not in the remove-node process, so that the active coordinator (a
``schedule --follow`` elsewhere) does the passes, and a drain cut short is visible and undone.
"""

from __future__ import annotations

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from .._exceptions import ClusterError
from .documents import FORMAT, dump_json, load_json, version_of
from .layout import ZkLayout
from .zk import UNAVAILABLE, Connection, explain

MOVING, STOPPING = "moving", "stopping"
TRIES = 10


def read_drains(conn: Connection, layout: ZkLayout) -> tuple[dict[str, str], str | None]:
    """The nodes being drained, with their phase, and the version of the marker (None: no marker)."""
    path = layout.drains
    try:
        data, stat = conn.call(conn.client.get_async, path)
    except NoNodeError:
        return {}, None
    return _parse(data, path), version_of(stat.mzxid)


def _parse(data: bytes, path: str) -> dict[str, str]:
    doc = load_json(data, "drain")
    nodes = doc.get("nodes") if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    if not isinstance(nodes, dict) or not all(v in (MOVING, STOPPING) for v in nodes.values()):
        raise ClusterError("drain", f"{path} is not a drain marker of format {FORMAT}")
    return {str(k): str(v) for k, v in nodes.items()}


def set_drain(conn: Connection, layout: ZkLayout, node: str, phase: str | None) -> str:
    """Set (or with None clear) one node's phase, against concurrent writers; the new version."""
    path = layout.drains
    for _ in range(TRIES):
        try:
            try:
                data, stat = conn.call(conn.client.get_async, path)
                nodes = _parse(data, path)
                version: int | None = stat.version
            except NoNodeError:
                nodes, version = {}, None
            if phase is None:
                nodes.pop(node, None)
            else:
                nodes[node] = phase
            raw = dump_json({"format": FORMAT, "nodes": nodes})
            if version is None:
                conn.call(conn.client.create_async, path, raw)  # the client's default ACL: coordinator only
                stat = conn.call(conn.client.exists_async, path)
            else:
                stat = conn.call(conn.client.set_async, path, raw, version=version)
            return version_of(stat.mzxid)
        except (BadVersionError, NodeExistsError):
            continue  # written meanwhile: read it again
        except UNAVAILABLE as exc:
            raise ClusterError("zk", f"marking {node} as draining: {explain(exc, path)}") from exc
    raise ClusterError("drain", f"{path} kept changing ({TRIES} tries)")

