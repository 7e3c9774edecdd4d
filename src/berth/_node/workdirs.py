"""A worker's directories and files on the host: made and removed here, and nowhere else.

Storm's layout (``_core.layout``) says where; this module makes it so, owned by the worker's
user where the worker may write, root-owned where it may not, without ever following a link a
worker could have planted, and it removes what a launch made when the launch fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .._core.config import NodeConfig
from .._core.layout import user_file, worker_root
from .._core.plan import Plan
from .._core.spec import ID_PATTERN
from .._exceptions import CleanupError, PolicyError, SpecError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RETRIES = 100
"""Times a directory may turn out non-empty again when it is removed (something still writes in
it) before removal gives up with an error instead of looping."""
_BATCH = 512
_KEPT = 65536
"""Subdirectories remembered per level (``_BATCH``) and in all (``_KEPT``) between scans."""

Entry = tuple[str, os.stat_result]
Scan = Callable[[int, int, str, int, int], tuple[list[Entry], bool]]
"""What ``walk`` asks of each directory: given its descriptor, the tree's device, the path shown
in errors, its depth and how many more subdirectories may be remembered, deal with its other
entries and return the subdirectories to visit, and whether it is done once they are (else it is
scanned again: a scan that removes what it lists can list in batches)."""


@dataclass
class _Level:
    name: str
    dev: int
    ino: int
    pending: list[Entry] = field(default_factory=list)
    done: bool = False


class WorkerDirs(Protocol):
    """Who makes a worker's directories, and what a launch and a cleanup do with them: berth
    (``BerthDirs``, the default) or Storm's supervisor (``stormdirs.StormDirs``)."""

    def prepare(self, plan: Plan, made: list[Path]) -> None:
        """Everything the plan mounts, and the worker script, ready for the container; what did
        not exist before goes into ``made`` (removed again if the launch fails)."""
        ...

    def remove(self, config: NodeConfig, worker_id: str) -> None:
        """What ``cleanup`` removes of a worker's directories (``CleanupError`` if it cannot)."""
        ...


class BerthDirs:
    """berth makes the worker's directories at launch and removes them at cleanup."""

    def prepare(self, plan: Plan, made: list[Path]) -> None:
        # No container of this worker exists (checked): its old root and user file are leftovers,
        # and the root was the worker's to tamper with (links), so it is not reused.
        _remove(plan.layout.worker_root, plan.layout.user_file)
        prepare(plan, made)

    def remove(self, config: NodeConfig, worker_id: str) -> None:
        remove(config, worker_id)


def prepare(plan: Plan, made: list[Path]) -> None:
    """Every directory the plan mounts, the user file and the worker script.

    ``made`` collects what did not exist before, in creation order, so that ``rollback`` can
    remove exactly that if a later step fails.
    """
    lay, ident = plan.layout, plan.identity
    owner = (ident.uid, ident.gid)
    # 0700, not Storm's group-readable modes: tenants often share a primary group (``users``), and
    # the supervisor dir that holds every topology's shared dir is mounted into every worker.
    mkdir(Path(lay.supervisor_dir), made)
    mkdir(Path(lay.shared_by_topology), made, owner=owner, mode=0o700)
    mkdir(Path(lay.worker_root), made, owner=owner, mode=0o700)
    mkdir(Path(lay.worker_tmp), made, owner=owner, mode=0o700)
    mkdir(Path(lay.artifacts), made, owner=owner, mode=0o700)
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
                          "to follow it") from exc
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
    """A worker's root (never followed if it is a symlink) and its user file; artifacts stay.

    Raises ``CleanupError`` when they cannot be removed; nothing outside them is touched.
    """
    if not ID_PATTERN.fullmatch(worker_id):  # the id is a path component here: never '..' or '/'
        raise SpecError("worker_id", f"{worker_id!r} is not a worker id")
    _remove(worker_root(config, worker_id), user_file(config, worker_id))


def _remove(root: str, ufile: str) -> None:
    remove_tree(root)
    try:
        os.unlink(ufile)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CleanupError("directories", f"cannot remove {ufile}: {exc.strerror}") from exc


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything under it; a missing path is not an error.

    ``path``'s parent is trusted (berth's own directory); ``path`` itself and all below it are
    not: a symlink or any other non-directory is unlinked, never followed, and a mount point
    (another device) inside the tree is refused rather than crossed.
    """
    parent, name = os.path.split(os.path.normpath(os.fspath(path)))
    try:
        pfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CleanupError("directories", f"cannot open {parent}: {exc.strerror}") from exc
    try:
        remove_at(pfd, name, os.fspath(path))
    finally:
        os.close(pfd)


def remove_at(pfd: int, name: str, shown: str, deadline: float | None = None) -> None:
    """``remove_tree`` for entry ``name`` of an open directory, which the caller reached without
    following links (so its parent need not be trusted either); ``shown`` names it in errors, and
    past ``deadline`` (``time.monotonic``) the removal stops with an error."""
    try:
        _remove_entry(pfd, name, shown, deadline)
    except OSError as exc:
        raise CleanupError("directories", f"cannot remove {shown}: {exc.strerror or exc}") from exc


def _remove_entry(pfd: int, name: str, shown: str, deadline: float | None) -> None:
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=pfd)
        return
    retries = 0

    def rmdir(fd: int, child: str) -> None:
        nonlocal retries
        try:
            os.rmdir(child, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or retries >= _RETRIES:
                raise
            retries += 1  # written to meanwhile: a later scan of this level finds it again

    def scan(fd: int, dev: int, shown: str, depth: int, room: int) -> tuple[list[Entry], bool]:
        found = _scan(fd, dev, shown, depth, max(1, min(_BATCH, room)), deadline)
        return found, not found  # a directory is done once a scan finds nothing left in it

    walk(pfd, name, st, shown, scan, leave=rmdir, deadline=deadline)
    os.rmdir(name, dir_fd=pfd)


def walk(pfd: int, name: str, st: os.stat_result, shown: str, scan: Scan, *,
         enter: Callable[[int], None] | None = None, leave: Callable[[int, str], None] | None = None,
         deadline: float | None = None, doing: str = "removed") -> None:
    """Visit directory ``name`` of ``pfd`` (just seen as ``st``) and every directory below it,
    depth first, never following a link: ``enter`` gets each one's descriptor as it is reached
    (the top's too), ``leave`` the parent's descriptor and the name once all below it is done.

    No recursion and one descriptor open at a time, whatever the depth: a worker can make a
    tree deeper than the stack or the descriptor limit. Going back up, each parent is checked to
    be the directory that was come down from, so a directory moved away meanwhile (to make the
    walk continue somewhere else) stops the walk with an error.
    """
    cur = _open_dir(pfd, name, st, shown)
    # levels[i]: the i-th directory of the path from the top down to the one ``cur`` holds, and
    # subdirectories of it seen by a scan and not yet visited: all that is kept per level, so
    # depth costs memory, not descriptors. Keeping a batch of those (not just one) spares
    # rescanning a wide directory from its start after each subdirectory (quadratic in its
    # width); the total kept is bounded, so a tree both deep and wide cannot make it large either.
    levels = [_Level(name, st.st_dev, st.st_ino)]
    kept = 0
    try:
        if enter is not None:
            enter(cur)
        while True:
            top = levels[-1]
            if not top.pending and not top.done:
                past_deadline(deadline, shown, doing)
                found, top.done = scan(cur, st.st_dev, shown, len(levels), _KEPT - kept)
                top.pending += found
                kept += len(found)
            if top.pending:
                cname, cst = top.pending.pop()
                kept -= 1
                try:
                    nfd = _open_dir(cur, cname, cst, shown)
                except FileNotFoundError:
                    continue
                os.close(cur)
                cur = nfd
                levels.append(_Level(cname, cst.st_dev, cst.st_ino))
                if enter is not None:
                    enter(cur)
                continue
            if len(levels) == 1:
                break
            done = levels.pop().name
            up = os.open("..", _DIR, dir_fd=cur)
            ust = os.fstat(up)
            if (ust.st_dev, ust.st_ino) != (levels[-1].dev, levels[-1].ino):
                os.close(up)
                raise CleanupError("directories", f"{shown}: a directory was moved while it was being {doing} "
                                   f"({len(levels)} levels down); stopped there")
            os.close(cur)
            cur = up
            if leave is not None:
                leave(cur, done)
    finally:
        os.close(cur)


def past_deadline(deadline: float | None, shown: str, doing: str = "removed") -> None:
    """Stop a walk whose time is up (what it did stays done: running it again goes on from there)."""
    if deadline is not None and time.monotonic() > deadline:
        raise CleanupError("directories", f"{shown}: not {doing} in the time allowed (a tree this large is stopped "
                           "part way); try again")


def _open_dir(dfd: int, name: str, expected: os.stat_result, shown: str) -> int:
    """Open a directory entry that was just seen to be a directory; fail if it is no longer it."""
    try:
        fd = os.open(name, _DIR, dir_fd=dfd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        fd = -1  # a link or a file now, where a directory was seen
    st = os.fstat(fd) if fd >= 0 else None
    if st is None or (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        if fd >= 0:
            os.close(fd)
        raise CleanupError("directories", f"{shown}: an entry was replaced while the tree was walked")
    return fd


def _scan(fd: int, dev: int, shown: str, depth: int, limit: int,
          deadline: float | None = None) -> list[tuple[str, os.stat_result]]:
    """Unlink every non-directory in ``fd`` until ``limit`` subdirectories have turned up, and
    return those (none: the directory is empty). A later scan lists only what is left."""
    found: list[tuple[str, os.stat_result]] = []
    with os.scandir(fd) as entries:
        for i, entry in enumerate(entries):
            if i % 4096 == 4095:  # a directory of millions of files is one scan
                past_deadline(deadline, shown)
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(entry.name, dir_fd=fd)
                    continue
            except (FileNotFoundError, IsADirectoryError):
                continue  # gone, or a directory now: the next scan sees it as it is
            if st.st_dev != dev:
                raise CleanupError("directories", f"{shown}: a mount point {depth} levels down "
                                   f"({entry.name!r}); not crossing it")
            found.append((entry.name, st))
            if len(found) >= limit:
                break
    return found
