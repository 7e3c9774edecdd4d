"""The exit journal: one small file per reported exit, so exactly-once survives a restart of berth.

(Not to be confused with the supervisor's event log, ``events.jsonl``, which records every
state change of an assigned worker for people to read.)
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from .._exceptions import LaunchError
from .._linux.fsprobe import probe_write
from .._runtimes.base import ExitRecord
from .._runtimes.shim.durable import replace_file

log = logging.getLogger("berth.node")


class ExitJournal:
    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir, "exits")

    def ensure(self) -> None:
        """Fail a launch up front when an exit could not be recorded: better than a double report."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe_write(self.dir, sync=False)  # on every launch: no flush, which cost each one a disk round trip
        except OSError as exc:
            raise LaunchError("state", f"state dir {self.dir} is not writable: {exc.strerror}") from exc

    def known(self) -> set[str]:
        """Container ids whose exit was reported."""
        try:
            return {p.stem for p in self.dir.glob("*.json")}
        except OSError:
            return set()

    def record(self, rec: ExitRecord) -> None:
        """Durably (file and directory flushed) before the exit is acknowledged to the runtime,
        which may then forget it: after a power loss the journal still says it was reported."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(str(self.dir / f"{rec.container_id}.json"), json.dumps(rec.to_dict()).encode())
        except OSError as exc:
            log.error("cannot journal the exit of %s (%s): it may be reported again after a restart",
                      rec.worker_id, exc)

    def forget(self, container_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.dir / f"{container_id}.json").unlink()
