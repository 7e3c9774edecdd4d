"""What the node's trust rests on, checked rather than assumed: the config is root's alone to
write, the accounts it names are names, and berth's state lies apart from what workers write."""

from __future__ import annotations

import os
import re
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
    The same rule as Storm's worker-launcher and YARN's container-executor configs.
    """
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(path)
    except OSError:
        return  # reading it reports the error
    problems = _writable_by_others(path, st, directory=False)
    # The directories of the path as given (a symlink there could be re-pointed) and as resolved.
    dirs: list[str] = []
    for start in (os.path.abspath(path), os.path.realpath(path)):
        d = os.path.dirname(start)
        while d not in dirs:
            dirs.append(d)
            d = os.path.dirname(d)
    for d in dirs:
        if problems:
            break
        try:
            problems = _writable_by_others(d, os.stat(d), directory=True)
        except OSError:
            continue
    if problems:
        raise ConfigError(field, f"{problems}; {what} must be root's alone to write")


def _writable_by_others(path: str, st: os.stat_result, directory: bool) -> str:
    if st.st_uid != 0:
        return f"{path} is owned by uid {st.st_uid}"
    if st.st_mode & 0o020 and st.st_gid != 0:
        return f"{path} is writable by group {st.st_gid}"
    if st.st_mode & 0o002 and not (directory and st.st_mode & 0o1000):
        return f"{path} is writable by everyone"
    return ""
