"""The exit journal: which exits were reported, so exactly-once survives a restart of berth and a
power loss.

One append-only file, ``<state_dir>/exits/journal.jsonl``: a line per reported exit (the record)
and a line per forgotten one (``{"forget": <container id>}``, when its container is removed).
Each exit's line is appended and flushed (``fdatasync``) before the exit is delivered and
acknowledged to the runtime, which may then forget it. One flush of one file that already exists
(no new file, no directory to flush): a quarter of what a file per exit cost, which a burst of
exits pays once per exit in the node's one watcher thread. Appends from several berth processes
are whole lines (one ``write`` each, under a shared lock); once the file passes
``COMPACT_BYTES`` a ``forget`` rewrites it with the exits still known (durably, under the
exclusive lock), and an appender that opened the old file opens the new one. A line cut by a
crash is ignored. Files of berth before this journal (``exits/<container id>.json``) still count.

(Not to be confused with the supervisor's event log, ``events.jsonl``, which records every
state change of an assigned worker for people to read.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

from .._exceptions import LaunchError
from .._linux.fsprobe import probe_write
from .._runtimes.base import ExitRecord
from .._runtimes.runc.shim.durable import append_record, replace_file

log = logging.getLogger("berth.node")

JOURNAL = "journal.jsonl"
COMPACT_BYTES = 1 << 20
_REOPEN_ATTEMPTS = 100


class ExitJournal:
    def __init__(self, state_dir: str, compact_bytes: int = COMPACT_BYTES) -> None:
        self.dir = Path(state_dir, "exits")
        self.path = self.dir / JOURNAL
        self.compact_bytes = compact_bytes

    def ensure(self) -> None:
        """Fail a launch up front when an exit could not be recorded: better than a double report."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe_write(self.dir, sync=False)  # on every launch: no flush, which cost each one a disk round trip
        except OSError as exc:
            raise LaunchError("state", f"state dir {self.dir} is not writable: {exc.strerror}") from exc

    def entries(self) -> dict[str, dict[str, object]]:
        """The reported exits still known, by container id (for people and tests)."""
        out: dict[str, dict[str, object]] = {}
        try:
            with open(self.path, "rb") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # cut by a crash while it was appended
                    if isinstance(entry, dict) and entry.get("forget"):
                        out.pop(str(entry["forget"]), None)
                    elif isinstance(entry, dict) and entry.get("container_id"):
                        out[str(entry["container_id"])] = entry
        except FileNotFoundError:
            pass
        return out

    def known(self) -> set[str]:
        """Container ids whose exit was reported."""
        try:
            legacy = {p.stem for p in self.dir.glob("*.json")}
            return legacy | set(self.entries())
        except OSError:
            return set()

    def record(self, rec: ExitRecord) -> None:
        """On the disk when this returns: after a power loss the journal still says it was reported."""
        try:
            self._append(json.dumps(rec.to_dict()).encode() + b"\n", durable=True)
        except OSError as exc:
            log.error("cannot journal the exit of %s (%s): it may be reported again after a restart",
                      rec.worker_id, exc)

    def forget(self, container_id: str) -> None:
        """Not flushed: a forgotten id that comes back after a crash is only a line too many
        (container ids are never reused)."""
        with contextlib.suppress(OSError):
            (self.dir / f"{container_id}.json").unlink()
        try:
            size = self._append(json.dumps({"forget": container_id}).encode() + b"\n", durable=False)
            if size > self.compact_bytes:
                self._compact()
        except OSError as exc:
            log.warning("cannot forget the exit of %s in the journal: %s", container_id, exc)

    def _open_current(self, lock: int) -> int:
        """The journal's file, locked, and the one at its path (a compaction may have replaced it
        between the open and the lock)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for _ in range(_REOPEN_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, lock)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise OSError(f"{self.path} kept being replaced")

    def _append(self, line: bytes, durable: bool) -> int:
        fd = self._open_current(fcntl.LOCK_SH)
        try:
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                line = b"\n" + line  # after a line a crash cut: not glued to it
            if durable:
                append_record(fd, line, fsync=os.fdatasync)
            else:
                os.write(fd, line)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _compact(self) -> None:
        fd = self._open_current(fcntl.LOCK_EX)
        try:
            live = b"".join(json.dumps(e).encode() + b"\n" for e in self.entries().values())
            replace_file(str(self.path), live)  # appenders waiting on the old file open the new one
        finally:
            os.close(fd)
