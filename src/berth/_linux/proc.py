"""``/proc/<pid>/status`` as a mapping: capabilities, ids, no_new_privs, seccomp, state, memory."""

from __future__ import annotations

import os


def read_status(pid: int | str, proc: str = "/proc") -> dict[str, str]:
    """Every ``Key:\tvalue`` line of the process's status file, values stripped."""
    with open(os.path.join(proc, str(pid), "status"), encoding="utf-8", errors="replace") as fh:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in fh) if v}


def is_stopped(pid: int | str, proc: str = "/proc") -> bool:
    """The process is stopped (``T``) or in a tracing stop (``t``): it runs no code, reaps no child
    and ends only when killed. False for a process that is gone."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), encoding="ascii", errors="replace") as fh:
            state = fh.read().rpartition(")")[2].split()[:1]
    except OSError:
        return False
    return state in (["T"], ["t"])


def rss_bytes(pid: int | str, proc: str = "/proc") -> int:
    """Resident memory of one process (``VmRSS``), 0 for a process that has none (a zombie)."""
    value = read_status(pid, proc).get("VmRSS", "0 kB").split()
    return int(value[0]) * 1024 if value else 0


def parent_and_group(pid: int | str, proc: str = "/proc") -> tuple[int, int]:
    """The parent pid and the process group of a process (``/proc/<pid>/stat``); OSError when it
    is gone. The command name may hold spaces and parentheses: the fields follow its last ')'."""
    with open(os.path.join(proc, str(pid), "stat"), encoding="ascii", errors="replace") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[1]), int(fields[2])


def real_uid(pid: int | str, proc: str = "/proc") -> int:
    """The process's real uid (the first of ``Uid:``), the one a signal's permission is checked on."""
    return int(read_status(pid, proc)["Uid"].split()[0])
