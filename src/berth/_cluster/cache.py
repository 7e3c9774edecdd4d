"""The agent's local memory: the last assignment document it read, and its own status.

The cache lets an agent that restarts while ZooKeeper is unreachable run its node from the last
document it actually read (never from nothing). Both files are replaced durably (write, fsync,
rename, fsync of the directory), so a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ClusterError
from .._runtimes.runc.shim.durable import replace_file
from .documents import MAX_DOCUMENT_BYTES, load_json


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(str(path), data, mode)  # file and directory flushed: a power loss keeps one whole


@dataclass(frozen=True)
class Cached:
    raw: bytes
    version: str
    node: str


class DocumentCache:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory, "assignment.json")

    def save(self, raw: bytes, version: str, node: str) -> None:
        body = {"node": node, "version": version, "document": base64.b64encode(raw).decode()}
        write_atomic(self.path, json.dumps(body).encode())

    def load(self, node: str) -> Cached | None:
        """The cached document, None when there is none; a damaged cache is an error, not "empty"."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ClusterError("cache", f"cannot read {self.path}: {exc.strerror}") from exc
        body = load_json(raw, "cache", max_bytes=2 * MAX_DOCUMENT_BYTES)
        try:
            doc = base64.b64decode(body["document"], validate=True)
            version, cached_node = str(body["version"]), str(body["node"])
        except (KeyError, TypeError, ValueError):
            raise ClusterError("cache", f"{self.path} is damaged") from None
        if cached_node != node:
            raise ClusterError("cache", f"{self.path} holds node {cached_node!r}'s document, not {node!r}'s")
        return Cached(doc, version, cached_node)


def write_status(directory: str | os.PathLike[str], status: dict[str, Any]) -> None:
    """``status.json``: the agent's view of ZooKeeper, readable while ZooKeeper is not."""
    write_atomic(Path(directory, "status.json"), json.dumps(status, indent=1, sort_keys=True).encode(), 0o644)


def read_agent_status(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(directory, "status.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
