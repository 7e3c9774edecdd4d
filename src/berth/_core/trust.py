"""The node config is trusted because only root can write it: checked, not assumed."""

from __future__ import annotations

import os

from .._exceptions import ConfigError


def check_root_owned(path: str) -> None:
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
    real = os.path.realpath(path)
    d = os.path.dirname(real)
    while not problems:
        try:
            problems = _writable_by_others(d, os.stat(d), directory=True)
        except OSError:
            break
        if d == "/":
            break
        d = os.path.dirname(d)
    if problems:
        raise ConfigError("config", f"{problems}; the node config must be root's alone to write")


def _writable_by_others(path: str, st: os.stat_result, directory: bool) -> str:
    if st.st_uid != 0:
        return f"{path} is owned by uid {st.st_uid}"
    if st.st_mode & 0o020 and st.st_gid != 0:
        return f"{path} is writable by group {st.st_gid}"
    if st.st_mode & 0o002 and not (directory and st.st_mode & 0o1000):
        return f"{path} is writable by everyone"
    return ""
