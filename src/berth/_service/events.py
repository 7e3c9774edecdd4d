"""The supervisor's event log, ``<state_dir>/events.jsonl``: one JSON line per state change.

For people and tools to read (not to be confused with the node's exit journal, which makes
exits exactly-once). Bounded: past ``max_bytes`` the file is rotated to ``events.jsonl.1``, so a
worker that crash-loops for a month cannot fill the state dir.

Like everything else in the state dir it is written only under the node's lock (``gate``): lines
made before (the cluster agent hands its first document to the supervisor before starting it)
are kept, a bounded number, and written once the lock is held; a supervisor that never gets the
lock writes none of them into the log of the one that has it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._runtimes.runc.shim.durable import append_record
from .phase import Phase, iso

log = logging.getLogger("berth.supervisor")

MAX_EVENTS_BYTES = 16 << 20
MAX_PENDING = 10000
"""Lines kept while the lock is not held (a document's rejections: at most 4096 entries)."""


class EventLog:
    def __init__(self, state_dir: str, max_bytes: int = MAX_EVENTS_BYTES,
                 gate: Callable[[], bool] = lambda: True) -> None:
        self.path = Path(state_dir, "events.jsonl")
        self.max_bytes = max_bytes
        self._gate = gate
        self._pending: deque[bytes] = deque(maxlen=MAX_PENDING)
        self._dropped = 0
        self._lock = threading.Lock()
        self._failing = False

    def write(self, wid: str, old: Phase | None, new: Phase | None, reason: str, *,
              level: int = logging.INFO, **extra: Any) -> dict[str, Any]:
        line = {"ts": iso(time.time()), "worker_id": wid, "from": old.value if old else None,
                "to": new.value if new else None, "reason": reason, **extra}
        if old is not None and new is not None:
            log.log(level, "%s: %s -> %s (%s)", wid, line["from"], line["to"], reason)
        elif new is not None:
            log.log(level, "%s: %s (%s)", wid, line["to"], reason)
        else:  # no phase: a rejection, a stop of a worker berth no longer tracks
            log.log(level, "%s: %s", wid, reason)
        data = (json.dumps(line) + "\n").encode()
        with self._lock:
            if not self._gate():
                self._dropped += len(self._pending) == MAX_PENDING
                self._pending.append(data)  # the oldest goes when it is full
                return line
            self._append(data)
        return line

    def flush(self) -> None:
        """Write the lines kept while the lock was not held (call once it is)."""
        with self._lock:
            if self._gate() and self._pending:
                self._append(b"")

    def _append(self, data: bytes) -> None:
        if self._pending:
            if self._dropped:
                log.warning("%d event lines made before the node's lock was held were dropped", self._dropped)
            data = b"".join(self._pending) + data
            self._pending.clear()
            self._dropped = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.path.stat().st_size + len(data) > self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            except FileNotFoundError:
                pass
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                append_record(fd, data)  # flushed per record: the log says what happened before a crash
            finally:
                os.close(fd)
            if self._failing:
                log.info("writing %s again", self.path)
            self._failing = False
        except OSError as exc:
            if not self._failing:  # one line per change, not one per event
                log.error("cannot write %s: %s", self.path, exc)
            self._failing = True
