"""The documents kept in ZooKeeper: validated on the way in, bounded in size, JSON on the wire.

Every document is read as untrusted: the coordinator reads what nodes write about themselves,
and a node reads what the coordinator (or whoever holds its identity) wrote for it. A document
past its size limit, with duplicate keys, nested too deep, or of an unknown format is refused
with the reason, and nothing in it is used.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._core.spec import ID_PATTERN, spec_digest
from .._core.validation import raise_validation
from .._exceptions import ClusterError
from .._service.slot import SlotView
from .capacity import MODEL, Capacity

FORMAT = 1
MAX_DOCUMENT_BYTES = 512 * 1024
"""Assignment and state documents; ZooKeeper's own limit per znode is 1 MiB (jute.maxbuffer)."""
MAX_REGISTRATION_BYTES = 64 * 1024
MAX_WORKERS_PER_NODE = 512
MAX_REPORTED_REJECTIONS = 100
MAX_ENGINE_REPORTS = 1024



def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_json(raw: bytes, what: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    if len(raw) > max_bytes:
        raise ClusterError(what, f"is {len(raw)} bytes, more than the {max_bytes} allowed")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise ClusterError(what, "is not UTF-8") from None
    except RecursionError:
        raise ClusterError(what, "is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, ints of more than 4300 digits
        raise ClusterError(what, f"is not valid JSON: {exc}") from exc


def dump_json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def tuplify(data: Any) -> Any:
    """JSON gives lists; the frozen models hold tuples."""
    if isinstance(data, dict):
        return {k: tuplify(v) for k, v in data.items()}
    if isinstance(data, list):
        return tuple(tuplify(v) for v in data)
    return data


def check_format(doc: Any, what: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ClusterError(what, f"must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ClusterError(f"{what}.format", f"must be {FORMAT}, got {doc.get('format')!r}")
    extra = sorted(set(doc) - keys - {"format"})
    if extra:
        raise ClusterError(f"{what}.{extra[0]}", "unknown key")
    return doc


# -- registration ----------------------------------------------------------------------------

class Registration(BaseModel):
    """The body of a node's ephemeral ``live`` znode."""

    model_config = MODEL
    node: str
    berth_version: str = Field(max_length=64)
    host: str = Field(max_length=255)
    pid: int = Field(ge=1)
    pid_start: int = Field(ge=0)
    """The process's start time in clock ticks since boot: with ``pid``, names one process."""
    boot_id: str = Field(max_length=64)
    started_at: float
    capacity: Capacity

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        if not ID_PATTERN.fullmatch(v):
            raise ValueError(f"{v!r} is not a node name")
        return v


def encode_registration(reg: Registration) -> bytes:
    return dump_json({"format": FORMAT, **reg.model_dump(mode="json")})


def decode_registration(raw: bytes, node: str) -> Registration:
    doc = dict(check_format(load_json(raw, "registration", MAX_REGISTRATION_BYTES), "registration",
                            set(Registration.model_fields)))
    doc.pop("format")
    try:
        reg = Registration.model_validate(tuplify(doc))
    except ValidationError as exc:
        raise raise_validation(exc, ClusterError, prefix="registration.") from None
    if reg.node != node:
        raise ClusterError("registration.node", f"names {reg.node!r}, but it is registered as {node!r}")
    return reg


def this_process() -> tuple[str, int, int, str]:
    """host, pid, the pid's start time, boot id: enough to tell a stale registration of ours."""
    import os

    return socket.gethostname(), os.getpid(), process_start(os.getpid()) or 0, boot_id()


def process_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


# -- the assignment document -----------------------------------------------------------------

MAX_DEAD_AFTER_S = 7 * 86400


@dataclass(frozen=True)
class AssignmentDoc:
    node: str
    workers: Sequence[Any]
    """Raw entries, each checked later like a launch request (one bad entry does not spoil the rest)."""
    generation: str | None = None
    dead_after_s: float | None = None
    """How long the coordinator lets the node's registration be gone before it moves its workers:
    a node cut off that long knows it may have been declared dead (fencing acts on it)."""


def encode_assignment(node: str, workers: Sequence[Mapping[str, Any]], generation: str | None = None,
                      dead_after_s: float | None = None) -> bytes:
    doc: dict[str, Any] = {"format": FORMAT, "node": node, "workers": list(workers)}
    if generation is not None:
        doc["generation"] = generation
    if dead_after_s is not None:
        doc["dead_after_s"] = dead_after_s
    raw = dump_json(doc)
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ClusterError("assignments", f"the document for node {node!r} would be {len(raw)} bytes, "
                                          f"more than {MAX_DOCUMENT_BYTES}")
    return raw


def decode_assignment(raw: bytes, node: str) -> AssignmentDoc:
    """The document's envelope; its entries are validated one by one by the caller."""
    doc = check_format(load_json(raw, "document"), "document", {"node", "workers", "generation", "dead_after_s"})
    if doc.get("node") != node:
        raise ClusterError("document.node", f"is {doc.get('node')!r}, not this node ({node!r})")
    workers = doc.get("workers")
    if not isinstance(workers, list):
        raise ClusterError("document.workers", "must be a list of worker specs")
    if len(workers) > MAX_WORKERS_PER_NODE:
        raise ClusterError("document.workers", f"lists {len(workers)} workers, more than the "
                                               f"{MAX_WORKERS_PER_NODE} a node takes")
    generation = doc.get("generation")
    if generation is not None and not isinstance(generation, str):
        raise ClusterError("document.generation", "must be a string")
    dead_after = doc.get("dead_after_s")
    if dead_after is not None and (isinstance(dead_after, bool) or not isinstance(dead_after, int | float)
                                   or not 1 <= dead_after <= MAX_DEAD_AFTER_S):
        raise ClusterError("document.dead_after_s", f"must be a number of seconds from 1 to {MAX_DEAD_AFTER_S}")
    return AssignmentDoc(node, workers, generation, None if dead_after is None else float(dead_after))


# -- the node's state report -----------------------------------------------------------------

def version_of(mzxid: int) -> str:
    """The version of a document: the zxid of its last write, unique and growing across the ensemble."""
    return f"{mzxid:#x}"


def version_number(version: str | None) -> int:
    try:
        return int(version, 16) if version else -1
    except ValueError:
        return -1


class WorkerReport(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    worker_id: str = Field(max_length=128)
    state: str = Field(max_length=32)
    restarts: int = 0
    failures: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    container_id: str | None = Field(default=None, max_length=80)
    digest: str | None = Field(default=None, max_length=64)
    """The digest of the spec the supervisor holds for it (while running: the one its container
    was launched from), so the coordinator sees which workers run their document's spec."""


def worker_reports(views: Sequence[SlotView]) -> list[WorkerReport]:
    """The supervisor's view of each worker, as much of it as the coordinator needs."""
    return [WorkerReport(worker_id=v.worker_id, state=v.phase.value, restarts=v.restarts, failures=v.failures,
                         exit_code=v.last_exit.exit_code if v.last_exit else None,
                         oom_killed=bool(v.last_exit and v.last_exit.oom_killed),
                         container_id=(v.container_id or "")[:12] or None, digest=spec_digest(v.spec))
            for v in views]


class EngineReport(BaseModel):
    """One container of this node's name as the engine listed it (the supervisor's last pass),
    whether or not any document names it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    worker_id: str = Field(max_length=128, pattern=f"^{ID_PATTERN.pattern}$")
    """Printed by ``cluster ps``: what a node writes is untrusted, so no control characters."""
    state: str = Field(max_length=32, pattern=r"^[a-z -]+$")
    container_id: str | None = Field(default=None, max_length=80, pattern=r"^[0-9A-Za-z]*$")
    owner: str | None = Field(default=None, max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")
    """The state dir of the other supervisor that launched it; None: this node's own."""


def engine_reports(listed: Sequence[Any], conflicts: Mapping[str, Sequence[str]]) -> list[EngineReport]:
    """The engine's listing (``WorkerState``s), at most ``MAX_ENGINE_REPORTS``, with the owner of
    each container that another supervisor launched."""
    owner = {w: o for o, ids in conflicts.items() for w in ids}
    return [EngineReport(worker_id=w.worker_id, state=str(w.state), container_id=w.container_id[:12],
                         owner=(owner.get(w.worker_id) or "")[:256] or None) for w in listed[:MAX_ENGINE_REPORTS]]


class DocumentStatus(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    version: str | None = Field(default=None, max_length=32)
    status: str = Field(max_length=32)
    """applied | partly-applied | rejected | missing | forbidden | cached"""
    reason: str | None = Field(default=None, max_length=4096)


class NodeState(BaseModel):
    """The body of ``nodes/<node>/state``: what the node runs and which document it applied."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    node: str = Field(max_length=128)
    updated_at: float
    session: str | None = Field(default=None, max_length=32)
    applied_version: str | None = Field(default=None, max_length=32)
    """The version of the last document read and handed to the supervisor."""
    supervisor_version: str | None = Field(default=None, max_length=32)
    """The same once every worker of it has been launched, adopted or rejected (None meanwhile)."""
    document: DocumentStatus | None = None
    rejected: list[dict[str, Any]] = Field(default_factory=list)
    """Cut to MAX_REPORTED_REJECTIONS when written; a document read is bounded by its size."""
    workers: list[WorkerReport] = Field(default_factory=list)
    engine: list[EngineReport] = Field(default_factory=list)
    """What the node's engine runs under its name, orphans included (at most ``MAX_ENGINE_REPORTS``)."""
    fenced: bool = False
    problem: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _short_rejections(self) -> NodeState:
        for r in self.rejected:
            if len(json.dumps(r)) > 8192:
                raise ValueError("a rejection is longer than 8 KiB")
        return self


def encode_state(state: NodeState) -> bytes:
    body = state.model_dump(mode="json")
    if len(body["rejected"]) > MAX_REPORTED_REJECTIONS:
        extra = len(body["rejected"]) - MAX_REPORTED_REJECTIONS
        body["rejected"] = [*body["rejected"][:MAX_REPORTED_REJECTIONS], {"reason": f"and {extra} more"}]
    for r in body["rejected"]:
        if isinstance(r.get("reason"), str) and len(r["reason"]) > 1024:
            r["reason"] = r["reason"][:1024] + "…"
    raw = dump_json({"format": FORMAT, **body})
    while len(raw) > MAX_DOCUMENT_BYTES and body["engine"]:  # the engine's listing gives way first
        body["engine"] = body["engine"][: len(body["engine"]) // 2]
        raw = dump_json({"format": FORMAT, **body})
    return raw


def decode_state(raw: bytes, node: str) -> NodeState:
    doc = dict(check_format(load_json(raw, "state"), "state", set(NodeState.model_fields)))
    doc.pop("format")
    try:
        st = NodeState.model_validate(doc)
    except ValidationError as exc:
        raise raise_validation(exc, ClusterError, prefix="state.") from None
    if st.node != node:
        raise ClusterError("state.node", f"names {st.node!r}, not {node!r}")
    return st


def now() -> float:
    return round(time.time(), 3)


def coordinator_of(data: bytes) -> str:
    """The coordinator's digest id, from the enrolment record ``nodes/<node>``."""
    doc = load_json(data, "node", max_bytes=4096)
    coordinator = doc.get("coordinator") if isinstance(doc, dict) else None
    if not isinstance(coordinator, str) or ":" not in coordinator:
        raise ClusterError("node", "the enrolment record names no coordinator identity")
    return coordinator
