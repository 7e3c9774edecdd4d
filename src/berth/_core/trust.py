"""What the node's trust rests on, checked rather than assumed: the config is root's alone to
write, the accounts it names are names, and berth's state lies apart from what workers write."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping

from .._exceptions import ConfigError
from .._paths import is_under


def account_names(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", name) or len(name) > 64:
            raise ValueError(f"{name!r} is not a user or group name")
    return names


def state_apart(state: str, worker_trees: Mapping[str, str]) -> None:
    """berth's state (exit journal, claims, supervisor state, API socket) must be outside every
    tree where workers write, and contain none: a worker must not reach it, nor leave it no room."""
    for key, path in worker_trees.items():
        if is_under(state, path):
            raise ValueError(f"node.state_dir ({state}) must not be under node.{key} ({path}), where workers "
                             "write; set node.state_dir elsewhere")
        if is_under(path, state):
            raise ValueError(f"node.state_dir ({state}) must not contain node.{key} ({path})")


def check_root_owned(path: str, field: str = "config", what: str = "the node config") -> None:
    """Refuse a config that anyone but root could have written, when berth runs as root.

    The config decides who may run what on the node (users, images, mounts, maxima); a tenant who
    could rewrite it, or replace it through a writable directory on its path, would decide instead.
    The same rule as Storm's worker-launcher and YARN's container-executor configs. It is read once,
    at start, so a root-owned file in a sticky directory (which others cannot replace) passes.
    """
    if os.geteuid() != 0 or not os.path.exists(path):
        return  # reading it reports a missing file
    check_trusted(path, field, f"{what} must be root's alone to write", sticky_ok=True)


def check_trusted(path: str, field: str, why: str, *, sticky_ok: bool = False) -> None:
    """Raise ``ConfigError`` on ``field`` (the problem, then ``why``) unless only root (and berth's
    own uid) can change what ``path`` holds: see ``untrusted``."""
    problem = untrusted(path, sticky_ok=sticky_ok)
    if problem:
        raise ConfigError(field, f"{problem}; {why}")


def untrusted(path: str, *, sticky_ok: bool = False) -> str:
    """Why someone other than root (or berth's own uid) could change what ``path`` holds; "" if nobody.

    Checked: every directory in which a name on the way to ``path`` is looked up, following each
    symlink as the kernel does (a link can be re-pointed by whoever may write the directory it lies
    in, and a chain of links passes through several), and ``path`` itself: owned by root (or berth),
    not writable by a group other than root's, nor by everyone. A sticky directory lets others add
    names, so it passes only as a parent with ``sticky_ok`` (a file read once, that others cannot
    replace); never as ``path`` itself (a directory whose every file is read).
    """
    owners = {0, os.geteuid()}
    try:
        lookups, target = _lookups(path)
        for d in lookups:
            problem = _writable_by_others(d, os.stat(d), owners, sticky_ok)
            if problem:
                return problem
        return _writable_by_others(target, os.stat(target), owners, sticky_ok=False)
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror or exc}"


_MAX_LINKS = 40
"""As the kernel's ``MAXSYMLINKS``: a longer chain is ``ELOOP``."""


def _lookups(path: str) -> tuple[list[str], str]:
    """The directories in which each name on the way to ``path`` is looked up, in order, and the
    physical path it leads to. ``..`` is taken physically, after the links before it."""
    pending = [c for c in os.path.join(os.getcwd(), path).split("/") if c]
    cur, dirs, links = "/", [], 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        if cur not in dirs:
            dirs.append(cur)
        nxt = os.path.join(cur, name)
        if os.path.islink(nxt):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            pending[:0] = [c for c in target.split("/") if c]
            continue
        cur = nxt
    return dirs, cur


def _writable_by_others(path: str, st: os.stat_result, owners: set[int], sticky_ok: bool) -> str:
    mode = f"(mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_uid not in owners:
        return f"{path} is owned by uid {st.st_uid} {mode}"
    if st.st_mode & 0o020 and st.st_gid != 0:
        return f"{path} is writable by group {st.st_gid} {mode}"
    if st.st_mode & 0o002 and not (sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o1000):
        return f"{path} is writable by everyone {mode}"
    return ""


def exposed(st: os.stat_result) -> str:
    """Why a file holding secrets (tokens, a credential) could be read by someone other than root
    or berth's own uid; "" if it cannot. Any group or other bit counts (group root may have members)."""
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}"
    if st.st_mode & 0o077:
        return f"is readable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def check_secrets(path: str, keys: tuple[str, ...]) -> None:
    """A config that holds tokens (``keys``) must be readable by root (or berth) alone."""
    if not keys:
        return
    try:
        problem = exposed(os.stat(path))
    except OSError:
        return  # it was just read: a file gone since is not a secret left open
    if problem:
        raise ConfigError("config", f"{path} holds tokens ({', '.join(keys)}) and {problem}; chmod 600 it")
