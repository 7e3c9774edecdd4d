"""berth-shim: the one monitor per node that parents every runc container and reports how each ended.

``runc run -d`` leaves no process behind a container, so only the container's parent can learn
its wait status. The shim is that parent: a child subreaper (``PR_SET_CHILD_SUBREAPER``) that
``posix_spawn``s runc, inherits each container's init when runc exits, and reaps it with
``wait4``. Before anything can remove the container's cgroup (only ``runc delete`` does, and only
after berth has acknowledged the exit) it reads the cgroup's OOM-kill count and peak memory and
writes the raw status, those numbers and the finish time to the worker's ``exit.json`` (temp file
+ rename). Exits are pushed to subscribed berth processes; pending ones are pushed again to every
new subscriber until acknowledged, so a berth restart loses none.

One process, one thread, standard library only (it must start fast, stay small, and run while
berth is being upgraded): a ``selectors`` loop over a unix socket, SIGCHLD through
``signal.set_wakeup_fd``. It is started detached (its own session, its own cgroup), so berth's
restarts and berth's cgroup being killed do not touch it. A lock file keeps it to one per node.
``upgrade`` re-executes it in place (same pid, so the containers stay its children). A shim
that starts after one was killed adopts the running containers it finds (pidfd + start time):
their exits are recorded with ``status_lost``, because only a parent can see a status.

Protocol: one JSON object per line each way. Requests carry ``op``; every reply has ``ok``.
It runs as its own small program (``daemon.command``), not through the berth package, so that
nothing but the standard library is loaded; berth imports these modules only for the names below.
"""

from __future__ import annotations

VERSION = "1"
SOCKET_NAME = "shim.sock"
LOCK_NAME = "shim.lock"
WORKERS = "workers"
