"""The one exception hierarchy of berth.

Every failure a user can cause or meet is a ``BerthError`` whose message names the field (or the
step) and the reason, so the CLI can print ``error: <field>: <reason>`` and a caller can catch one
base class. The subclasses say *whose* fault it is: the node config, the request, the policy, the
user database, or the container engine. A backend's own exception is kept as ``__cause__``.
"""

from __future__ import annotations


class BerthError(Exception):
    """Base of every error berth raises on purpose."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class ConfigError(BerthError):
    """The node configuration (berth.toml or storm.yaml) is invalid."""


class SpecError(BerthError):
    """A worker request is malformed: wrong type, unknown key, out-of-range value."""


class PolicyError(BerthError):
    """A well-formed request that the node's policy refuses (image, mounts, cores, ids)."""


class CapacityError(BerthError):
    """The node has no room for this worker now: with it, its workers together would take more
    memory, cpu or pids than the node's capacity. Not the request's fault, and not for ever: it
    may fit once others end (a supervisor retries it then)."""


class IdentityError(BerthError):
    """The worker's user cannot be resolved or may not run workers (root, low uid, banned)."""


class EngineError(BerthError):
    """The container engine is unreachable or refused an operation."""


class LaunchError(BerthError):
    """A launch failed at a named step; everything the launch had made was removed."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        super().__init__(f"launch failed at {step}", reason)


class CleanupError(BerthError):
    """A worker's directories could not be removed (a worker can make its tree hard to remove, or
    the disk failed). Nothing outside them was touched; the reason names the path and the step."""


class WorkerNotRunning(EngineError):
    """The worker exists but has no running process for what was asked (memory, exec, audit)."""

    def __init__(self, worker_id: str, state: str) -> None:
        self.worker_id = worker_id
        self.state = state
        super().__init__("worker_id", f"worker {worker_id!r} is not running ({state})")


class ShimError(EngineError):
    """The runc runtime's monitor (berth-shim) refused a request or could not be reached."""


class ClusterError(BerthError):
    """ZooKeeper is unreachable or refused an operation, or a cluster document is invalid."""


class WaitTimeout(BerthError):
    """Something berth waited for (an exit, a subscription, a lock) did not happen in time."""


class WorkerNotFound(BerthError):
    """No worker with this id exists on this node (or it was removed behind berth's back)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        super().__init__("worker_id", f"no worker {worker_id!r} on this node")


class StateError(BerthError):
    """berth's own persisted state exists but cannot be used; nothing is removed until it is fixed."""


class SupervisorLocked(BerthError):
    """Another supervisor already serves this node (the same state dir, or the same node name
    on the same engine); two would fight over the workers."""


class IllegalTransition(BerthError):
    """A worker's phase was to move where the supervisor's phase table allows no move: a bug of
    berth's, not anyone's input. Raised only where bugs must be loud (tests); logged elsewhere."""


class LauncherRefused(BerthError):
    """A command of berth's worker-launcher (the program Storm's ``supervisor.worker.launcher``
    names) that berth refused or could not carry out. ``code`` is the exit code Storm's own
    ``worker-launcher`` gives for the same failure, so Storm's supervisor sees what it knows."""

    def __init__(self, field: str, reason: str, code: int) -> None:
        self.code = code
        super().__init__(field, reason)
