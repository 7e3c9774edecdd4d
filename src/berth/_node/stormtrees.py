"""Storm's trees as its setuid worker-launcher changes them (``setup_dir_permissions``,
``recursive_delete``), done by berth as root without that program's races: for the workers
berth's plugin launches (``stormdirs``) and for ``berth-worker-launcher``'s commands (``launcher``).

Storm's supervisor asks its launcher to hand a topology's code, a worker's artifacts and a
user's blobs to the topology's user (``user:<launcher group>``, modes from ``setup_permissions``
in Storm's ``worker-launcher.c``) and to delete trees as that user (``rmr``). Workers own files
in those trees, so every step here reaches its path from a root that only the operator and
Storm's supervisor write (the local dir, the log dir) one ``O_NOFOLLOW`` component at a time,
changes what it found through the descriptor it holds, and never takes anything that is not
Storm's: a path outside Storm's trees, a link, a mount point, or a hard link to a file that also
lives elsewhere. Storm's program walks paths by name as root, so a worker that swaps a directory
for a link between two of its steps could have it chmod any file of the node.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .._core.config import NodeConfig
from .._core.layout import supervisor_dir
from .._exceptions import CleanupError, LauncherRefused, PolicyError
from .workdirs import Entry, past_deadline, remove_at, walk

STORMDIST, USERCACHE, WORKERS, ARTIFACTS = "stormdist", "usercache", "workers", "artifacts"
UNABLE_TO_STAT_FILE = 12
UNABLE_TO_BUILD_PATH = 21
FAILED = 255
"""Storm's worker-launcher.h codes these steps give (``-1`` from ``main`` is 255)."""
MAX_ENTRIES = 1_000_000
"""Entries one launcher command may change: more, and it stops with an error rather than run on."""
MAX_PATH = 4096
MAX_NOTES = 200
"""``NOOP`` lines a command reports (a tree of links would otherwise fill berth's memory with them)."""

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def roots(config: NodeConfig) -> dict[str, str]:
    """The trees Storm's launcher commands may name, as the node's config spells them."""
    sup = supervisor_dir(config)
    return {STORMDIST: os.path.join(sup, "stormdist"), USERCACHE: os.path.join(sup, "usercache"),
            WORKERS: os.path.join(config.node.local_dir, "workers"), ARTIFACTS: config.artifacts_root}


@dataclass(frozen=True)
class Located:
    """A path Storm named, below one of its roots: ``rest`` are the components under ``root``."""

    path: str
    tree: str
    root: str
    rest: tuple[str, ...]


def components(path: str) -> tuple[str, ...]:
    """An absolute path's components; refused: relative, ``.`` or ``..`` in it, longer than PATH_MAX."""
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise LauncherRefused("path", f"longer than {MAX_PATH} bytes", UNABLE_TO_BUILD_PATH)
    if not path.startswith("/"):
        raise LauncherRefused("path", f"{path!r} is not an absolute path", UNABLE_TO_BUILD_PATH)
    parts = tuple(p for p in path.split("/") if p)
    if any(p in (".", "..") for p in parts):
        raise LauncherRefused("path", f"{path!r} has a '.' or '..' component; refused", UNABLE_TO_BUILD_PATH)
    return parts


def locate(trees: Mapping[str, str], path: str) -> Located:
    """Which of Storm's trees ``path`` lies strictly below: as the config spells the tree, or as
    it resolves (Storm passes canonical paths for some commands, absolute ones for others)."""
    parts = components(path)
    best: tuple[int, str, str] | None = None
    for tree, root in trees.items():
        for spelling in {os.path.normpath(root), os.path.realpath(root)}:
            prefix = components(spelling)
            if len(parts) > len(prefix) and parts[:len(prefix)] == prefix and (best is None or len(prefix) > best[0]):
                best = (len(prefix), tree, root)
    if best is None:
        raise LauncherRefused("path", f"{path} is not below Storm's directories ({', '.join(trees.values())}); "
                              "refused", UNABLE_TO_BUILD_PATH)
    return Located(path, best[1], os.path.realpath(best[2]), parts[best[0]:])


@contextlib.contextmanager
def parent_dir(where: Located, owners: tuple[int, ...] | None = None) -> Iterator[int | None]:
    """The directory holding ``where``'s last component, reached from its root without following
    a link; None when a directory on the way does not exist. With ``owners``, every directory on
    the way below the root must belong to one of them: another tenant's dir is not a way in."""
    try:
        fd = os.open(where.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    try:
        for comp in where.rest[:-1] if fd >= 0 else ():
            try:
                nfd = os.open(comp, _DIR, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                fd = -1
                break
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LauncherRefused("path", f"{where.path}: {comp!r} on the way is a link or not a directory; "
                                          "not followed", UNABLE_TO_BUILD_PATH) from exc
                raise LauncherRefused("path", f"{where.path}: cannot open {comp!r}: {exc.strerror}", FAILED) from exc
            os.close(fd)
            fd = nfd
            check_owner(where, os.fstat(fd), owners)
        yield fd if fd >= 0 else None
    finally:
        if fd >= 0:
            os.close(fd)


def launcher_mode(mode: int, setgid: bool, user_write: bool = True) -> int:
    """The mode Storm's ``setup_permissions`` gives: the user keeps its read and execute bits (and
    gets write if ``user_write``), the launcher's group reads and writes, others get nothing;
    a directory gets group execute and, with ``setgid``, setgid (so that what Storm's supervisor
    creates in it stays in the group; not on a worker's ``tmp``, where it breaks the JVM's attach)."""
    new = (mode & (stat.S_IRUSR | stat.S_IXUSR)) | stat.S_IRGRP | stat.S_IWGRP
    if user_write:
        new |= stat.S_IWUSR
    if stat.S_ISDIR(mode):
        new |= stat.S_IXGRP | (stat.S_ISGID if setgid else 0)
    return new


def check_owner(where: Located, st: os.stat_result, allowed: tuple[int, ...] | None) -> None:
    """What a command changes or deletes, and every directory above it in Storm's tree, belongs to
    root, Storm's supervisor or the user named: never another tenant's tree handed over or
    deleted because Storm named it (a worker can write the topology owner the logviewer reads)."""
    if allowed is not None and not stat.S_ISLNK(st.st_mode) and st.st_uid not in allowed:
        raise PolicyError("path", f"{where.path} belongs to uid {st.st_uid}, neither the user's nor Storm's "
                          "supervisor's; refused")


@dataclass
class _Permissions:
    """One walk: what it gives the entries to, what it has seen and left alone."""

    uid: int
    gid: int
    setgid: bool
    user_write: bool
    deadline: float | None
    max_entries: int
    notes: list[str] = field(default_factory=list)
    seen: int = 0
    untold: int = 0

    def count(self, shown: str) -> None:
        self.seen += 1
        if self.seen > self.max_entries:
            raise PolicyError("directories", f"{shown}: more than {self.max_entries} entries; stopped")
        if self.seen % 4096 == 0:
            past_deadline(self.deadline, shown, "set up")

    def note(self, line: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(line)
        else:
            self.untold += 1

    def on_dir(self, fd: int) -> None:
        st = os.fstat(fd)
        os.fchown(fd, self.uid, self.gid)
        os.fchmod(fd, launcher_mode(st.st_mode, self.setgid, self.user_write))

    def on_file(self, dfd: int, name: str, seen: os.stat_result, shown: str) -> None:
        """A regular file, changed through an ``O_PATH`` descriptor of the very inode that was
        seen (a file swapped for a link meanwhile is a link to that descriptor, left alone)."""
        if seen.st_nlink > 1:
            self.note(f"NOOP: {shown} (a hard link: may be a file from elsewhere)")
            return
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(st.st_mode) \
                    or st.st_nlink > 1:
                self.note(f"NOOP: {shown} (changed while it was set up)")
                return
            via = f"/proc/self/fd/{fd}"  # chown/chmod of the inode held; an O_PATH fd takes no fchmod
            os.chown(via, self.uid, self.gid)
            os.chmod(via, launcher_mode(st.st_mode, self.setgid, self.user_write))
        finally:
            os.close(fd)

    def scan(self, fd: int, dev: int, shown: str, depth: int, room: int) -> tuple[list[Entry], bool]:
        """Every entry of a directory, once (nothing is removed, so it is listed whole): files are
        changed here, subdirectories returned to be entered; links and the rest are left alone."""
        found: list[Entry] = []
        with os.scandir(fd) as entries:
            for entry in entries:
                here = f"{shown}/{entry.name}" if depth == 1 else f"{shown}/…/{entry.name}"
                self.count(shown)
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev != dev:
                        self.note(f"NOOP: {here} (a mount point: not crossed)")
                    elif len(found) >= room:
                        raise PolicyError("directories", f"{shown}: too many directories to walk; stopped")
                    else:
                        found.append((entry.name, st))
                elif stat.S_ISREG(st.st_mode):
                    self.on_file(fd, entry.name, st, here)
                else:
                    self.note(f"NOOP: {here}")
        return found, True


def give_at(pfd: int, name: str, st: os.stat_result, shown: str, owner: tuple[int, int], *, setgid: bool = True,
            user_write: bool = True, deadline: float | None = None, max_entries: int = MAX_ENTRIES) -> list[str]:
    """Storm's ``setup_dir_permissions``: entry ``name`` of ``pfd`` (just seen as ``st``: a
    directory or a file) and all below it given to ``owner`` with ``launcher_mode``, through the
    descriptor-only walk that removes workers' trees: no link followed, no mount point crossed, a
    directory moved or swapped meanwhile stops it; hard links, fifos, sockets and devices are left
    alone (Storm's program gives a hard link away and stops at a fifo). Returns ``NOOP`` notes."""
    perms = _Permissions(owner[0], owner[1], setgid, user_write, deadline, max_entries)
    try:
        if stat.S_ISDIR(st.st_mode):
            walk(pfd, name, st, shown, perms.scan, enter=perms.on_dir, deadline=deadline, doing="set up")
        elif stat.S_ISREG(st.st_mode):
            perms.on_file(pfd, name, st, shown)
        else:
            raise PolicyError("directories", f"{shown} is neither a directory nor a file")
    except CleanupError as exc:
        raise PolicyError("directories", exc.reason) from exc
    except OSError as exc:
        raise PolicyError("directories", f"{shown}: {exc.strerror or exc}") from exc
    return perms.notes + ([f"… and {perms.untold} more left alone"] if perms.untold else [])


def give(path: str, uid: int, gid: int, setgid: bool, user_write: bool = True,
         max_entries: int = MAX_ENTRIES) -> list[str]:
    """``give_at`` for a path whose parent is trusted (Storm's supervisor made it; checked by the
    caller): ``path`` itself must be a plain directory or file, never a link."""
    parent, name = os.path.split(os.path.normpath(path))
    pfd = os.open(parent, _DIR)
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise PolicyError("directories", f"{path} is a link; not followed")
        return give_at(pfd, name, st, path, (uid, gid), setgid=setgid, user_write=user_write,
                       max_entries=max_entries)
    finally:
        os.close(pfd)


def set_permissions(where: Located, owner: tuple[int, int], user_write: bool, allowed: tuple[int, ...],
                    deadline: float) -> list[str]:
    """A launcher command's ``setup_dir_permissions(path, user_write, setgid)`` on a path Storm
    named, reached from its root (``parent_dir``). Returns notes on what was left alone."""
    with parent_dir(where, allowed) as pfd:
        name = where.rest[-1]
        try:
            if pfd is None:
                raise FileNotFoundError
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise LauncherRefused("path", f"Path does not exist {where.path}", UNABLE_TO_BUILD_PATH) from None
        if stat.S_ISLNK(st.st_mode):
            raise LauncherRefused("path", f"{where.path} is a link; not followed", UNABLE_TO_BUILD_PATH)
        check_owner(where, st, allowed)
        return give_at(pfd, name, st, where.path, owner, user_write=user_write, deadline=deadline)


def remove(where: Located, allowed: tuple[int, ...], deadline: float) -> bool:
    """Storm's ``rmr``: the tree at ``where`` deleted (a link unlinked, never followed). False
    when there was nothing to delete."""
    with parent_dir(where, allowed) as pfd:
        if pfd is None:
            return False
        name = where.rest[-1]
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise LauncherRefused("path", f"Failed to delete {where.path}: {exc.strerror}", UNABLE_TO_STAT_FILE) \
                from exc
        check_owner(where, st, allowed)
        try:
            remove_at(pfd, name, where.path, deadline)
        except CleanupError:
            try:
                os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                return True  # deleted meanwhile (Storm deletes some trees twice at once): done, as Storm's rmr says
            raise
    return True
