"""Noticing that an assignments file (or a directory of them) changed.

Where the platform allows, inotify (through ``watchdog``) wakes the supervisor as soon as a
writer *closes* a file or renames one into place, not at each write, so a file is read when its
writer is done with it. Where it does not (no inotify, the watch limit reached), the supervisor
polls: the files' size and modification time, every ``poll_s``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .assignments import signature

log = logging.getLogger("berth.supervisor")

_WAKING = {"created", "deleted", "moved", "closed"}
"""Event types after which the file is worth reading: not ``modified`` (a write half-way)."""


class SourceWatch:
    """Change detection for one assignments path: notified where possible, polled always."""

    def __init__(self, path: str, on_change: Callable[[], None]) -> None:
        self.path = Path(path)
        self._on_change = on_change
        self._dirty = threading.Event()
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._observer: Any = None
        self.notified = False
        """True when inotify watches the path (then polling is only a backstop)."""

    def start(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - a declared dependency; polling still works
            return
        watch_dir = self.path if self.path.is_dir() else self.path.parent
        target = None if self.path.is_dir() else os.fspath(self.path)
        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in _WAKING:
                    return
                paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
                if target is None or target in paths:
                    outer._dirty.set()
                    outer._on_change()

        try:
            observer = Observer()
            observer.daemon = True
            observer.schedule(Handler(), os.fspath(watch_dir), recursive=False)
            observer.start()
        except (OSError, RuntimeError) as exc:
            log.warning("cannot watch %s (%s); polling it instead", watch_dir, exc)
            return
        self._observer, self.notified = observer, True

    def mark_read(self) -> None:
        """Called just before the path is read: changes from now on count as new."""
        self._dirty.clear()
        self._seen = signature(self.path)

    def changed(self) -> bool:
        if self._dirty.is_set():
            return True
        return signature(self.path) != self._seen

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
