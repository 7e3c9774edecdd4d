"""Helpers shared by the audit, hostile-worker, hostile-request and fault tests.

Workers are small Python programs; they report what they saw in files of their own directory
and block on a ``go`` file, so a test waits on exits and on worker-made files, never on time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from berth import Node, WorkerSpec
from berth._runtimes.base import ExitRecord

from .conftest import poll_until

WAIT = 120.0
"""An upper bound for anything a worker does here; reached only when something is broken."""

WAIT_FOR_GO = "import os,time\nwhile not os.path.exists('go'): time.sleep(0.02)\n"


def worker(worker_id: str, script: str, *args: str, user: str = "berth-alice", **kw: Any) -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, topology_id=kw.pop("topology_id", "topo-h"), port=kw.pop("port", 6700),
                      user=user, command=("python3", "-c", script, *args), **kw)


def root_of(node: Node, worker_id: str) -> Path:
    return Path(node.config.node.local_dir, "workers", worker_id)


def go(node: Node, worker_id: str, text: str = "") -> None:
    """Release a worker blocked in WAIT_FOR_GO."""
    root_of(node, worker_id).joinpath("go").write_text(text)


def wait_file(path: Path, node: Node, worker_id: str, timeout: float = WAIT) -> None:
    """Wait for a running worker to create ``path``; fail at once, with its output, if it ends first."""
    def ready() -> bool:
        if path.exists():
            return True
        if node.all_dead(worker_id) and not path.exists():
            output = b"".join(node.logs(worker_id, tail=50)).decode(errors="replace")
            pytest.fail(f"{worker_id} ended before creating {path.name}:\n{output}")
        return False

    poll_until(ready, f"{path.name} from {worker_id}", timeout)


class Exits:
    """An exit callback that keeps every record and lets a test wait for them."""

    def __init__(self) -> None:
        self.records: list[ExitRecord] = []
        self.cond = threading.Condition()

    def __call__(self, rec: ExitRecord) -> None:
        with self.cond:
            self.records.append(rec)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT) -> list[ExitRecord]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.records) >= n, timeout), self.records
            return list(self.records)

    def of(self, worker_id: str) -> ExitRecord:
        with self.cond:
            assert self.cond.wait_for(lambda: any(r.worker_id == worker_id for r in self.records), WAIT)
            return next(r for r in self.records if r.worker_id == worker_id)


def snapshot(*dirs: str) -> dict[str, tuple[int, int, int, int]]:
    """Every path under ``dirs`` with its mode, owner, group and size (directories: size 0)."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for top in dirs:
        if not os.path.lexists(top):
            continue
        for here, subdirs, files in os.walk(top):
            for name in [*subdirs, *files, ""]:
                p = os.path.join(here, name) if name else here
                st = os.lstat(p)
                out[p] = (st.st_mode, st.st_uid, st.st_gid, 0 if os.path.isdir(p) else st.st_size)
    return out
