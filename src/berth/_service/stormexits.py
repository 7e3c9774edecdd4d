"""The exit ledger of Storm-launched workers: each exit handed to Storm's plugin exactly once.

Storm's supervisor keeps its own restart logic and learns that a worker ended from the exit
callback its plugin was given at launch. berth records each exit here, durably (one fsynced file
per worker id, ``<state_dir>/storm-exits/<worker_id>.json``), before anything else can lose it;
the plugin fetches the pending ones (long poll), runs the callback, and acknowledges each. An
acknowledged exit stays known (so a restarted berth that finds the ended container again does not
report it twice) until Storm cleans the worker up. A worker id is Storm's UUID, launched once:
one exit per id.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.spec import ID_PATTERN
from .._runtimes.base import ExitRecord
from .._runtimes.runc.shim.durable import replace_file, unlink_durably

log = logging.getLogger("berth.storm")

LEDGER_DIR = "storm-exits"
MAX_ENTRIES = 4096
"""Exits kept at once (a node runs at most a few dozen workers; Storm cleans each up within
minutes of its end). Past it the oldest acknowledged exit goes first, then the oldest pending one
(logged: Storm then learns of that worker's end from its heartbeats alone)."""
MAX_FILE_BYTES = 64 * 1024


@dataclass
class Entry:
    record: ExitRecord
    seq: int
    acked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"exit": self.record.to_dict(), "seq": self.seq, "acked": self.acked}


class ExitLedger:
    """Thread-safe. ``add`` from the node's exit watcher, ``wait``/``ack`` from the API."""

    def __init__(self, state_dir: str, max_entries: int = MAX_ENTRIES) -> None:
        self.dir = Path(state_dir, LEDGER_DIR)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._entries: dict[str, Entry] = {}
        self._seq = 0
        self._waiting = 0
        self._closed = False

    def load(self) -> None:
        """Read what an earlier berth recorded; an unreadable file is logged and left aside."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        found: dict[str, Entry] = {}
        with os.scandir(self.dir) as it:
            names = sorted(e.name for e in it if e.name.endswith(".json") and not e.name.startswith("."))
        for name in names:
            wid = name.removesuffix(".json")
            try:
                entry = self._read(self.dir / name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("storm exit ledger: %s cannot be read (%s); set aside", name, exc)
                continue
            if entry.record.worker_id != wid or not ID_PATTERN.fullmatch(wid):
                log.error("storm exit ledger: %s names worker %r; set aside", name, entry.record.worker_id)
                continue
            found[wid] = entry
        with self._lock:
            self._entries = dict(sorted(found.items(), key=lambda kv: kv[1].seq))
            self._seq = max((e.seq for e in found.values()), default=0)
            self._evict()

    @staticmethod
    def _read(path: Path) -> Entry:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError("too large")
        doc = json.loads(raw)
        return Entry(ExitRecord.from_dict(doc["exit"]), int(doc["seq"]), bool(doc["acked"]))

    def _write(self, entry: Entry) -> None:
        replace_file(str(self.dir / f"{entry.record.worker_id}.json"), json.dumps(entry.to_json()).encode())

    def add(self, rec: ExitRecord) -> bool:
        """Record an exit once; False when this worker's exit is known already (or cannot be
        recorded: logged, and the next sweep tries again)."""
        if not ID_PATTERN.fullmatch(rec.worker_id):
            return False
        with self._cond:
            if rec.worker_id in self._entries:
                return False
            entry = Entry(rec, self._seq + 1)
            try:
                self._write(entry)
            except OSError as exc:
                log.error("cannot record the exit of %s (%s); it is looked for again at the next sweep",
                          rec.worker_id, exc)
                return False
            self._seq += 1
            self._entries[rec.worker_id] = entry
            self._evict()
            self._cond.notify_all()
        log.info("worker %s ended (%s); kept for Storm's plugin", rec.worker_id, rec.how)
        return True

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries:
            acked = next((w for w, e in self._entries.items() if e.acked), None)
            victim = acked or next(iter(self._entries))
            if acked is None:
                log.error("storm exit ledger is full (%d): the exit of %s is dropped before Storm's plugin "
                          "fetched it", self.max_entries, victim)
            del self._entries[victim]
            try:
                unlink_durably(str(self.dir / f"{victim}.json"))
            except OSError as exc:
                log.error("cannot remove %s from the storm exit ledger: %s", victim, exc)

    def known(self, worker_id: str) -> bool:
        with self._lock:
            return worker_id in self._entries

    def acked_ids(self) -> set[str]:
        with self._lock:
            return {w for w, e in self._entries.items() if e.acked}

    def pending(self, limit: int) -> list[ExitRecord]:
        with self._lock:
            return [e.record for e in self._entries.values() if not e.acked][:limit]

    def wait(self, timeout: float, limit: int) -> list[ExitRecord]:
        """The pending exits, oldest first, as soon as there is one, or [] after ``timeout``."""
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: self._closed or any(not e.acked for e in self._entries.values()),
                                    timeout=timeout)
            finally:
                self._waiting -= 1
        return self.pending(limit)

    def close(self) -> None:
        """berth is stopping: every poll waiting is answered now (a server waits for its requests
        to end before it exits), and none waits from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def waiting(self) -> int:
        """Callers in ``wait`` now."""
        with self._lock:
            return self._waiting

    def ack(self, worker_id: str, container_id: str) -> bool:
        """The plugin ran the callback for this exit: never handed out again. False when there is
        no such pending exit (acknowledged already, or another container's)."""
        with self._lock:
            entry = self._entries.get(worker_id)
            if entry is None or entry.record.container_id != container_id:
                return False
            if entry.acked:
                return True
            entry.acked = True
            try:
                self._write(entry)
            except OSError as exc:
                entry.acked = False
                log.error("cannot record that the exit of %s was delivered (%s)", worker_id, exc)
                return False
        return True

    def drop(self, worker_id: str) -> None:
        """Storm cleaned the worker up: forget its exit (one it never fetched is logged)."""
        with self._lock:
            entry = self._entries.pop(worker_id, None)
        if entry is None:
            return
        if not entry.acked:
            log.info("the exit of %s (%s) was not fetched by Storm's plugin before its cleanup", worker_id,
                     entry.record.how)
        try:
            unlink_durably(str(self.dir / f"{worker_id}.json"))
        except OSError as exc:
            log.error("cannot remove %s from the storm exit ledger: %s", worker_id, exc)

    def counts(self) -> dict[str, int]:
        with self._lock:
            acked = sum(1 for e in self._entries.values() if e.acked)
            return {"pending": len(self._entries) - acked, "acked": acked}
