"""Assignments: the desired state of a node, ``{workers: [spec, …]}``, from files or the API.

Parsing is tolerant per entry: one bad spec is rejected with its error and the others stand,
because a typo in one worker's entry must not stop (or kill) the rest of the node.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.docfile import read_document
from .._core.spec import WorkerSpec, spec_from_mapping
from .._core.trust import check_trusted
from .._exceptions import BerthError

SUFFIXES = (".yaml", ".yml", ".json")
MAX_ASSIGNMENTS_BYTES = 16 << 20
"""An assignments file larger than this is rejected unread."""
MAX_WORKERS = 4096
"""Entries in one document; a node runs far fewer workers."""
MAX_FILES = 1024
"""Assignment files read from one directory. The files of a directory together are bounded as
one document is (``MAX_ASSIGNMENTS_BYTES``, ``MAX_WORKERS``): each is read, and polled, in turn."""


@dataclass(frozen=True)
class Rejection:
    source: str
    index: int | None
    """Position in the document's ``workers`` list; None when the whole document is bad."""
    worker_id: str | None
    field: str | None
    reason: str
    retried: bool = False
    """Not for ever: the worker waits for the node's capacity and is launched once it fits."""

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "index": self.index, "worker_id": self.worker_id, "field": self.field,
                "reason": self.reason, "retried": self.retried}

    def __str__(self) -> str:
        where = self.source + (f"[{self.index}]" if self.index is not None else "")
        who = f" ({self.worker_id})" if self.worker_id else ""
        return f"{where}{who}: {self.field + ': ' if self.field else ''}{self.reason}"


@dataclass
class Assignments:
    specs: dict[str, WorkerSpec] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """worker_id -> where its spec came from."""
    indexes: dict[str, int | None] = field(default_factory=dict)
    """worker_id -> its position in its document's ``workers`` list."""
    rejected: list[Rejection] = field(default_factory=list)
    broken_sources: set[str] = field(default_factory=set)
    """Sources that could not be read at all (their previous specs should be kept)."""
    keep_all: bool = False
    """Nothing could be read as a whole (a directory of too many files): every previous spec stays."""

    def add(self, spec: WorkerSpec, source: str, index: int | None) -> None:
        if spec.worker_id in self.specs:
            also = self.sources[spec.worker_id]
            self.rejected.append(Rejection(source, index, spec.worker_id, "worker_id",
                                           f"{spec.worker_id!r} is assigned twice (also in {also})"))
            return
        for other in self.specs.values():
            if other.port == spec.port:
                self.rejected.append(Rejection(source, index, spec.worker_id, "port",
                                               f"port {spec.port} is already assigned to {other.worker_id!r}"))
                return
        self.specs[spec.worker_id] = spec
        self.sources[spec.worker_id] = source
        self.indexes[spec.worker_id] = index


def parse_document(doc: Any, source: str, into: Assignments | None = None) -> Assignments:
    """Entries of one document. Only a complete document with a ``workers`` list may change the
    desired state: anything else (empty, null, a half-written file) is rejected as a whole and
    its source keeps its previous workers. Draining is an explicit ``workers: []``."""
    out = into if into is not None else Assignments()
    if not isinstance(doc, Mapping) or set(doc) - {"workers"} or not isinstance(doc.get("workers"), list):
        extra = sorted(set(doc) - {"workers"}) if isinstance(doc, Mapping) else []
        if extra:
            reason = f"unknown key {extra[0]!r}"
        elif doc is None or (isinstance(doc, Mapping) and "workers" not in doc):
            reason = ("empty document: the previous workers stay (to remove them all, write "
                      "'workers: []')" if not doc else "has no 'workers' key: the previous workers stay")
        else:
            reason = "must be a mapping {workers: [spec, …]}"
        out.rejected.append(Rejection(source, None, None, extra[0] if extra else "workers", reason))
        out.broken_sources.add(source)
        return out
    if len(doc["workers"]) > MAX_WORKERS:
        out.rejected.append(Rejection(source, None, None, "workers", f"more than {MAX_WORKERS} entries"))
        out.broken_sources.add(source)
        return out
    for i, entry in enumerate(doc["workers"]):
        wid = entry.get("worker_id") if isinstance(entry, Mapping) else None
        try:
            spec = spec_from_mapping(entry, source=f"workers[{i}]")
        except BerthError as exc:
            out.rejected.append(Rejection(source, i, wid if isinstance(wid, str) else None, exc.field, exc.reason))
            continue
        out.add(spec, source, i)
    return out


def _files(path: Path, limit: int = MAX_FILES) -> list[Path]:
    """The assignment files of ``path`` in name order, at most ``limit + 1`` of them (one more
    says there are too many), found without holding a listing of a huge directory."""
    if not path.is_dir():
        return [path]
    with os.scandir(path) as entries:
        names = (e.name for e in entries if e.name.endswith(SUFFIXES) and not e.name.startswith("."))
        return [path / n for n in heapq.nsmallest(limit + 1, names)]


def load_assignments(path: str | os.PathLike[str], *, max_bytes: int = MAX_ASSIGNMENTS_BYTES,
                     max_entries: int = MAX_WORKERS, max_files: int | None = None,
                     trust: Callable[[str], str] | None = None) -> Assignments:
    """Read a file, or every ``*.yaml|*.yml|*.json`` file of a directory, in name order.

    A directory's files together take at most ``max_bytes`` and list at most ``max_entries``
    entries: a file past that is rejected as a whole (its previous workers stay), as one that
    cannot be read is. A directory of more than ``max_files`` (``MAX_FILES``) files changes nothing.
    ``trust`` (``berth._core.trust.untrusted``) says why someone other than root could change a
    path: such a file is rejected whole, and such a directory (or a path above it) changes nothing."""
    out = Assignments()
    root = Path(path)
    if not root.exists():
        out.rejected.append(Rejection(str(root), None, None, "assignments", "does not exist"))
        out.broken_sources.add(str(root))
        return out
    problem = trust(str(root)) if trust is not None else ""
    if problem:
        out.rejected.append(Rejection(str(root), None, None, "assignments", problem))
        out.broken_sources.add(str(root))
        out.keep_all = True
        return out
    limit = MAX_FILES if max_files is None else max_files
    files = _files(root, limit)
    if len(files) > limit:
        out.rejected.append(Rejection(str(root), None, None, "workers", f"the directory holds more than {limit} "
                                      "assignment files; nothing is changed until it holds fewer"))
        out.broken_sources.add(str(root))
        out.keep_all = True
        return out
    used_bytes = used_entries = 0
    for f in files:
        try:
            problem = trust(str(f)) if trust is not None and f != root else ""
            if problem:
                raise BerthError("assignments", problem)
            size = f.stat().st_size
            if used_bytes + size > max_bytes:
                raise BerthError("workers", f"the directory's files together take more than {max_bytes} bytes")
            doc = read_document(f, "assignments", BerthError, MAX_ASSIGNMENTS_BYTES)
            listed = doc.get("workers") if isinstance(doc, Mapping) else None
            entries = len(listed) if isinstance(listed, list) else 0
            if used_entries + entries > max_entries:
                raise BerthError("workers", f"the directory's files together list more than {max_entries} entries")
        except OSError as exc:
            out.rejected.append(Rejection(str(f), None, None, None, f"cannot read: {exc.strerror or exc}"))
            out.broken_sources.add(str(f))
            continue
        except BerthError as exc:
            out.rejected.append(Rejection(str(f), None, None, exc.field if exc.field in ("workers", "assignments")
                                          else None, exc.reason))
            out.broken_sources.add(str(f))
            continue
        used_bytes, used_entries = used_bytes + size, used_entries + entries
        parse_document(doc, str(f), into=out)
    return out


UNTRUSTED_WHY = "the node runs what the assignments say, as any user it allows: they must be root's alone to write"


def check_source(path: str | os.PathLike[str]) -> None:
    """Before a supervisor starts: ``ConfigError`` on ``assignments`` unless only root can change
    the path and every assignment file in it (``berth._core.trust``)."""
    check_trusted(os.fspath(path), "assignments", UNTRUSTED_WHY)
    root = Path(path)
    if root.is_dir():
        for f in _files(root):
            check_trusted(str(f), "assignments", UNTRUSTED_WHY)


def one_user_per_topology(specs: Mapping[str, WorkerSpec], sources: Mapping[str, str]) -> list[Rejection]:
    """A topology runs as one user (its shared dir and artifacts are that user's): entries that
    name another user for a topology than its first entry are rejected, not retried forever."""
    owner: dict[str, WorkerSpec] = {}
    out = []
    for wid, spec in specs.items():
        first = owner.setdefault(spec.topology_id, spec)
        if first.user != spec.user:
            out.append(Rejection(sources.get(wid, "?"), None, wid, "user",
                                 f"topology {spec.topology_id!r} runs as {first.user!r} (worker "
                                 f"{first.worker_id!r}); one topology, one user"))
    return out


def past_the_maximum(specs: Mapping[str, WorkerSpec], assigned: Container[str], limit: int,
                     max_bytes: int) -> dict[str, str]:
    """The worker ids to refuse, with why, so that at most ``limit`` remain, taking at most
    ``max_bytes`` as JSON: workers already ``assigned`` keep their places (a new entry never
    pushes out one that runs), then entries in their order."""
    ranked = [w for w in specs if w in assigned] + [w for w in specs if w not in assigned]
    out: dict[str, str] = {}
    kept = total = 0
    for wid in ranked:
        size = len(specs[wid].model_dump_json())
        if kept >= limit:
            out[wid] = f"this node runs at most {limit} workers (supervisor.max_workers)"
        elif total + size > max_bytes:
            out[wid] = f"the node's assignments would take more than {max_bytes} bytes"
        else:
            kept, total = kept + 1, total + size
    return out


def signature(path: str | os.PathLike[str]) -> tuple[tuple[str, int, int], ...]:
    """What changes when an assignment file is edited, added or removed: cheap to poll."""
    root = Path(path)
    try:
        return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in _files(root) if f.exists())
    except OSError:
        return ()
