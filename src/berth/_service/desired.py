"""The supervisor's persisted state: desired workers, assignment version, per-worker counters.

One JSON file, ``<state_dir>/supervisor.json``, replaced atomically (write a temporary file,
fsync, rename, fsync the directory): a crash leaves the old document or the new one, never
half of either. It is what makes a restart safe: desired state set through the API survives,
and so do the restart counters and the exits already handled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.spec import WorkerSpec, spec_from_mapping
from .._exceptions import BerthError, StateError
from .._runtimes.runc.shim.durable import replace_file
from .assignments import Rejection

log = logging.getLogger("berth.supervisor")

STATE_FILE = "supervisor.json"
FORMAT = 1
MAX_STATE_BYTES = 64 << 20
"""A state file larger than this is not read (it was not written by berth)."""
MAX_PLANNED = 4096
"""Planned stops kept (their exits are normally handled, and forgotten, within seconds)."""


@dataclass
class Saved:
    """The desired state as persisted; ``version`` is the caller's opaque assignment version."""

    specs: dict[str, WorkerSpec] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    """Container ids berth was stopping (drain, unassigned, replaced): their exits, found after a
    crash of berth, are berth's own stops, not the workers' failures."""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version,
                "workers": [{"source": self.sources.get(w, "?"), "spec": s.model_dump(mode="json")}
                            for w, s in sorted(self.specs.items())],
                "counters": self.counters, "rejected": [r.to_dict() for r in self.rejected],
                "planned": self.planned[-MAX_PLANNED:]}


class DesiredStore:
    """Reads and atomically replaces ``supervisor.json`` in the state dir."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir, STATE_FILE)

    def load(self) -> Saved | None:
        """The saved state, or None on a node that never had one. Raises ``StateError`` when
        the file is there but unreadable: the caller must then remove nothing."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError("state", f"cannot read {self.path}: {exc.strerror}") from exc
        if len(raw) > MAX_STATE_BYTES:
            raise StateError("state", f"{self.path} is larger than {MAX_STATE_BYTES} bytes")
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"not a berth supervisor state of format {FORMAT}")
            out = Saved(version=doc.get("version"), counters=dict(doc.get("counters") or {}))
            for entry in doc["workers"]:
                spec = spec_from_mapping(entry["spec"])
                out.specs[spec.worker_id] = spec
                out.sources[spec.worker_id] = str(entry.get("source", "?"))
            out.rejected = [Rejection(**r) for r in doc.get("rejected") or []]
            out.planned = [str(c) for c in doc.get("planned") or []][-MAX_PLANNED:]
        except (ValueError, KeyError, TypeError, BerthError) as exc:
            raise StateError("state", f"{self.path} cannot be used: {exc}") from exc
        return out

    def save(self, saved: Saved) -> bool:
        """Replace the file durably; False (and an error logged) when it could not be written."""
        data = json.dumps(saved.to_json(), separators=(",", ":")).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(str(self.path), data)
        except OSError as exc:
            log.error("cannot save the supervisor state to %s: %s", self.path, exc)
            return False
        return True
