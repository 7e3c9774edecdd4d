"""A worker's directories and files on the host: made and removed here, and nowhere else.

Storm's layout (``_core.layout``) says where; this module makes it so, owned by the worker's
user where the worker may write, root-owned where it may not, without ever following a link a
worker could have planted, and it removes what a launch made when the launch fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .._core.config import NodeConfig
from .._core.layout import user_file, worker_root
from .._core.plan import Plan
from .._exceptions import PolicyError


def prepare(plan: Plan, made: list[Path]) -> None:
    """Every directory the plan mounts, the user file and the worker script.

    ``made`` collects what did not exist before, in creation order, so that ``rollback`` can
    remove exactly that if a later step fails.
    """
    lay, ident = plan.layout, plan.identity
    owner = (ident.uid, ident.gid)
    mkdir(Path(lay.supervisor_dir), made)
    mkdir(Path(lay.shared_by_topology), made, owner=owner, mode=0o750)
    mkdir(Path(lay.worker_root), made, owner=owner, mode=0o750)
    mkdir(Path(lay.worker_tmp), made, owner=owner, mode=0o700)
    mkdir(Path(lay.artifacts), made, owner=owner, mode=0o750)
    mkdir(Path(lay.user_file).parent, made)
    write(Path(lay.user_file), ident.user.encode() + b"\n", made, mode=0o644)
    write(Path(plan.script_path), plan.script.encode("utf-8"), made, mode=0o550, owner=(0, ident.gid))


def mkdir(path: Path, made: list[Path], owner: tuple[int, int] | None = None, mode: int = 0o755) -> None:
    """Make ``path`` (and missing parents, root-owned); give it to ``owner`` without ever
    following a symlink, and never take a directory away from another user."""
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o755)
        except FileExistsError:
            continue  # a concurrent launch made it: it is not ours to roll back
        made.append(d)
    if owner is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise PolicyError("directories", f"{path} is not a plain directory ({exc.strerror}); refusing "
                          "to follow it") from None
    try:
        uid = os.fstat(fd).st_uid
        if uid not in (0, owner[0]):
            # A topology runs as one user: its shared and artifacts dirs are not handed over to
            # whoever names the same topology in a request.
            raise PolicyError("topology_id", f"{path} belongs to uid {uid}, not to the worker's user "
                              f"(uid {owner[0]})")
        os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, made: list[Path], mode: int, owner: tuple[int, int] | None = None) -> None:
    """Write a file berth owns (never through a symlink), recording it in ``made`` if new."""
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    if not existed:
        made.append(path)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def rollback(made: list[Path]) -> None:
    """Undo ``prepare``: children before parents; shared parents (workers/, the topology's dirs)
    only if empty, since a concurrent launch may be using a directory this one happened to create."""
    for p in reversed(made):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()


def remove(config: NodeConfig, worker_id: str) -> None:
    """A worker's root (never followed if it is a symlink) and its user file; artifacts stay."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(worker_root(config, worker_id))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(user_file(config, worker_id))
