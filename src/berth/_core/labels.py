"""berth's labels on a worker's container: written by the plan, read back by one decoder.

Every runtime keeps them with the container (the engine's labels, runc's annotations, a process's
plan), and whatever lists containers reads them: the runtimes, admission, the one-supervisor claim.
They can be written by anyone who can make a container on the engine, so they are decoded in one
place, the same way for every reader: a value that is not what berth writes reads as absent,
never as an exception in a listing that serves every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LABEL_PREFIX = "berth."
LABEL_WORKER = "berth.worker"
LABEL_TOPOLOGY = "berth.topology"
LABEL_PORT = "berth.port"
LABEL_USER = "berth.user"
LABEL_NODE = "berth.node"
LABEL_SPEC = "berth.spec"
LABEL_OWNER = "berth.owner"
"""The state dir of the berth that launched the container: two supervisors that share a node name
on one engine see whose each worker is (and refuse to start instead of fighting)."""
LABEL_MEMORY = "berth.memory_mb"
LABEL_CPU = "berth.cpu_percent"
LABEL_PIDS = "berth.pids_limit"
"""What the container was given: admission counts what the node's workers hold from one listing,
whoever launched them, without an inspect per container."""
LABEL_IMAGE = "berth.image"
"""The image a worker runs, where the runtime keeps no image of its own (runc's annotations)."""
MAX_PORT = 65535


def _count(value: Any) -> int | None:
    """A plain decimal number as berth writes it (no sign, no exponent), else None."""
    text = str(value) if value is not None else ""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


@dataclass(frozen=True)
class WorkerLabels:
    """What berth's labels say about one container, decoded."""

    worker_id: str = ""
    topology_id: str = ""
    port: int = 0
    """0 when the label is missing or not a port number."""
    port_text: str | None = None
    """The port label as written (the audit re-plans what the container claims, even when bad)."""
    user: str = ""
    node: str = ""
    image: str | None = None
    spec_digest: str | None = None
    owner: str | None = None
    memory_mb: int | None = None
    cpu_percent: int | None = None
    pids_limit: int | None = None

    @classmethod
    def decode(cls, labels: Mapping[str, Any]) -> WorkerLabels:
        def text(key: str) -> str | None:
            value = labels.get(key)
            return None if value is None else str(value)

        port = _count(labels.get(LABEL_PORT))
        return cls(worker_id=text(LABEL_WORKER) or "", topology_id=text(LABEL_TOPOLOGY) or "",
                   port=port if port is not None and 0 < port <= MAX_PORT else 0, port_text=text(LABEL_PORT),
                   user=text(LABEL_USER) or "", node=text(LABEL_NODE) or "", image=text(LABEL_IMAGE),
                   spec_digest=text(LABEL_SPEC), owner=text(LABEL_OWNER), memory_mb=_count(labels.get(LABEL_MEMORY)),
                   cpu_percent=_count(labels.get(LABEL_CPU)), pids_limit=_count(labels.get(LABEL_PIDS)))

    @property
    def held(self) -> tuple[int, int, int] | None:
        """(memory MiB, cpu percent, pids) the container was given, when all three labels say."""
        if self.memory_mb is None or self.cpu_percent is None or self.pids_limit is None:
            return None
        return self.memory_mb, self.cpu_percent, self.pids_limit

    def request(self) -> dict[str, Any]:
        """The request fields the labels claim (ids, user, port as written, image where labelled),
        for the audit to re-plan and compare: a port that is no number stays text, and is refused."""
        out: dict[str, Any] = {}
        for key, value in (("worker_id", self.worker_id), ("topology_id", self.topology_id), ("user", self.user),
                           ("image", self.image)):
            if value:
                out[key] = value
        if self.port_text:
            out["port"] = int(self.port_text) if self.port_text.isdigit() else self.port_text
        return out
