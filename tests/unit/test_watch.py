"""Assignment files are noticed when their writer closes them (inotify), and by polling as a backstop."""

from __future__ import annotations

import threading
from pathlib import Path

from berth._service.watch import SourceWatch


def test_a_closed_write_is_noticed_without_a_poll(tmp_path: Path) -> None:
    f = tmp_path / "assign.yaml"
    f.write_text("workers: []\n")
    woke = threading.Event()
    w = SourceWatch(str(f), woke.set)
    w.start()
    try:
        assert w.notified  # inotify is there on Linux
        w.mark_read()
        assert not w.changed()
        (tmp_path / "other.yaml").write_text("x")  # another file in the directory: not ours
        with open(f, "a") as fh:
            fh.write("# edited\n")
        assert woke.wait(10)
        assert w.changed()
    finally:
        w.close()


def test_polling_notices_a_change_without_notification(tmp_path: Path) -> None:
    f = tmp_path / "assign.yaml"
    f.write_text("workers: []\n")
    w = SourceWatch(str(f), lambda: None)  # never started: polling only
    w.mark_read()
    assert not w.changed()
    f.write_text("workers: []  # longer now\n")
    assert w.changed()
