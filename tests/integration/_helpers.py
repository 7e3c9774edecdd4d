"""Helpers shared by the audit, hostile-worker, hostile-request and fault tests.

Workers are small Python programs; they report what they saw in files of their own directory
and block on a ``go`` file, so a test waits on exits and on worker-made files, never on time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from berth import Node, WorkerSpec

from ..exits import WAIT as WAIT
from ..exits import Exits as Exits  # re-exported: the integration tests take it from here
from .conftest import poll_until

WAIT_FOR_GO = "import os,time\nwhile not os.path.exists('go'): time.sleep(0.02)\n"

TRY_READS = r"""
import errno, json, os, sys
out = {}
for path in json.loads(sys.argv[1]):
    try:
        out[path] = ("listed " + ",".join(sorted(os.listdir(path)))) if os.path.isdir(path) else \
            ("read " + open(path).read())
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
json.dump(out, open(".report.json", "w"))
os.rename(".report.json", "report.json")
"""
"""A worker that tries to list or read every path of its JSON argument; ``report.json`` says what
each gave: ``listed …``, ``read …`` or the errno's name."""

WRITE_SECRETS = r"""
import sys
for d in sys.argv[1:]:
    open(d + "/secret", "w").write("a secret")
open("ready", "w").close()
""" + WAIT_FOR_GO
"""A worker that writes ``secret`` into each directory of its arguments, then waits for ``go``."""


def worker(worker_id: str, script: str, *args: str, user: str = "berth-alice", **kw: Any) -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, topology_id=kw.pop("topology_id", "topo-h"), port=kw.pop("port", 6700),
                      user=user, command=("python3", "-c", script, *args), **kw)


def root_of(node: Node, worker_id: str) -> Path:
    return Path(node.config.node.local_dir, "workers", worker_id)


def go(node: Node, worker_id: str, text: str = "") -> None:
    """Release a worker blocked in WAIT_FOR_GO.

    Written aside and renamed: the worker polls for ``go`` and reads it at once, so a file created
    empty and then written could be read empty (a worker told to exit 6 exited 0)."""
    release(root_of(node, worker_id), text)


def release(root: Path, text: str = "") -> None:
    """``go`` in a worker's root, whole at once (see ``go``)."""
    root.joinpath(".go").write_text(text)
    root.joinpath(".go").rename(root / "go")


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
