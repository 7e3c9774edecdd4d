"""The kernel's mount table (``/proc/<pid>/mountinfo``), parsed once, read by the runtime and the audit.

Two questions about mounts need the kernel's own answer rather than a path walk: which mounts
lie below a directory that is about to be bound read-only (a bind is recursive, a read-only
flag is not), and where a worker's mount really comes from (a path inside the worker's mount
namespace can be changed by the worker wherever it may write; the table cannot).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from .._paths import is_under

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in paths as \ooo.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    """One line of a mountinfo file; paths unescaped."""

    mount_id: int
    parent_id: int
    device: str
    """``major:minor`` of the filesystem."""
    root: str
    """The directory of the filesystem that is mounted here (``/`` unless a bind of a subtree)."""
    mount_point: str
    options: frozenset[str]
    """Per-mount options: ``ro`` or ``rw``, ``nosuid``… (not the superblock's)."""
    fstype: str
    source: str
    super_options: frozenset[str] = frozenset()
    """The superblock's options (after the source): a v1 cgroup mount's controllers are here."""

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) < 6 or len(r) < 2:
            continue
        entries.append(MountEntry(mount_id=int(f[0]), parent_id=int(f[1]), device=f[2], root=_unescape(f[3]),
                                  mount_point=_unescape(f[4]), options=frozenset(f[5].split(",")),
                                  fstype=r[0], source=_unescape(r[1]),
                                  super_options=frozenset(r[2].split(",")) if len(r) > 2 else frozenset()))
    return entries


def read_mountinfo(pid: int | str = "self", proc: str = "/proc") -> list[MountEntry]:
    with open(os.path.join(proc, str(pid), "mountinfo"), encoding="utf-8", errors="surrogateescape") as fh:
        return parse_mountinfo(fh.read())


def reachable(table: list[MountEntry]) -> list[MountEntry]:
    """The mounts a path lookup can reach: not covered by a later mount on the same point.

    A mount stacked on the same mount point hides the one below, and with it every mount
    below that one; what is hidden cannot be opened by path, so it is not part of what a
    process can see or write.
    """
    by_id = {m.mount_id: m for m in table}
    covered = {m.parent_id for m in table
               if m.parent_id in by_id and by_id[m.parent_id].mount_point == m.mount_point}

    def path_open(m: MountEntry, depth: int = 0) -> bool:
        # Can a lookup get to where ``m`` is mounted? Only through its parent, unless ``m`` is
        # stacked on that parent's own mount point, in which case through the parent's parent.
        parent = by_id.get(m.parent_id)
        if parent is None or parent is m or depth > len(table):
            return True
        if parent.mount_point == m.mount_point:
            return path_open(parent, depth + 1)
        return parent.mount_id not in covered and path_open(parent, depth + 1)

    def visible(m: MountEntry) -> bool:
        return m.mount_id not in covered and path_open(m)

    return [m for m in table if visible(m)]


def top_mount(table: list[MountEntry], path: str) -> MountEntry | None:
    """The reachable mount whose mount point is ``path`` itself, if any."""
    found = [m for m in reachable(table) if m.mount_point == path]
    return found[-1] if found else None


def containing_mount(table: list[MountEntry], path: str) -> MountEntry | None:
    """The reachable mount that ``path`` lies in: the longest mount point above it."""
    best: MountEntry | None = None
    for m in reachable(table):
        if is_under(path, m.mount_point) and (best is None or len(m.mount_point) >= len(best.mount_point)):
            best = m
    return best


def filesystem_path(table: list[MountEntry], path: str) -> tuple[str, str] | None:
    """``(device, path within that filesystem)`` of a host path: what a bind of it shows as root."""
    m = containing_mount(table, path)
    if m is None:
        return None
    rest = path[len(m.mount_point):] if m.mount_point != "/" else path
    return m.device, os.path.normpath(m.root.rstrip("/") + "/" + rest.lstrip("/"))


def submounts(path: str, table: list[MountEntry] | None = None) -> list[str]:
    """Mount points strictly below ``path`` on this host, parents before children."""
    if table is None:
        table = read_mountinfo()
    below = {m.mount_point for m in reachable(table) if m.mount_point != path and is_under(m.mount_point, path)}
    return sorted(below, key=lambda p: (p.count("/"), p))


def read_only_all_the_way_down(mounts: list[dict[str, Any]], table: list[MountEntry] | None = None,
                               ) -> list[dict[str, Any]]:
    """Engine API mounts in which every read-only bind is read-only in its submounts too.

    Before API 1.44 the engine binds recursively but makes only the top mount read-only, so a
    read-only bind of ``/sys/fs/cgroup`` on a cgroup v1 host hands the worker every controller
    hierarchy writable. A read-only bind with submounts becomes a non-recursive bind plus one
    non-recursive read-only bind per submount (the engine mounts parents before children).
    A submount under another planned mount is left to that mount.
    """
    if table is None:
        table = read_mountinfo()
    targets = [m["Target"] for m in mounts]
    out: list[dict[str, Any]] = []
    for m in mounts:
        subs = submounts(m["Source"], table) if m.get("Type") == "bind" and m.get("ReadOnly") else []
        if not subs:
            out.append(m)
            continue
        out.append({**m, "BindOptions": {**m.get("BindOptions", {}), "NonRecursive": True}})
        for sub in subs:
            target = os.path.join(m["Target"], os.path.relpath(sub, m["Source"]))
            if any(t != m["Target"] and is_under(t, m["Target"]) and is_under(target, t) for t in targets):
                continue
            out.append({"Type": "bind", "Source": sub, "Target": target, "ReadOnly": True,
                        "BindOptions": {"Propagation": "rprivate", "NonRecursive": True}})
    return out
