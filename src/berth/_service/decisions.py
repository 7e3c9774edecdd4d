"""The supervisor's per-worker decisions, as pure functions: what an exit or a failed launch
means for the worker's counters, its next phase and its restart delay.

Kept apart from the loop so that each rule of ``docs/supervisor.md`` is one line here and is
unit-tested with exact values, without threads or an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .._core.serviceconfig import SupervisorSection
from .._core.timefmt import seconds_between
from .._exceptions import (
    BerthError,
    CapacityError,
    ConfigError,
    IdentityError,
    LaunchError,
    PolicyError,
    SpecError,
)
from .._runtimes.base import ExitRecord
from .phase import Phase

PERMANENT = (PolicyError, IdentityError, SpecError, ConfigError)
"""Errors that say the request can never launch as given on this node: retrying cannot help."""


MAX_PASS_RETRY_S = 10.0
"""The longest wait between two attempts at a pass while the engine is unreachable."""


def pass_retry_wait(base_s: float, failures: int) -> float:
    """After ``failures`` failed passes in a row: doubling from ``base_s``, at most ``MAX_PASS_RETRY_S``."""
    return float(min(base_s * 2 ** min(failures - 1, 16), MAX_PASS_RETRY_S))


def backoff_delay(failures: int, s: SupervisorSection) -> float:
    """Doubling from ``backoff_base_s``, capped; at the cap once crash-looping."""
    if failures <= 0:
        return 0.0
    if failures >= s.crashloop_after:
        return s.backoff_cap_s
    return float(min(s.backoff_base_s * (2 ** (failures - 1)), s.backoff_cap_s))


class ExitCause(StrEnum):
    """Why a worker ended, for metrics and people."""

    STOP = "stop"
    """Planned: berth stopped it (no longer assigned, replaced, drained) or an operator did."""
    OOM = "oom"
    CRASH = "crash"
    """A non-zero exit code, a signal, or a lost status."""
    STALLED = "stalled"
    """Killed because its PID 1 stayed stopped."""
    EXIT = "exit"
    """Exit code 0."""


@dataclass(frozen=True)
class ExitDecision:
    failures: int
    delay: float
    phase: Phase
    cause: ExitCause


def exit_cause(ex: ExitRecord, planned: bool) -> ExitCause:
    if planned:
        return ExitCause.STOP
    if ex.oom_killed:
        return ExitCause.OOM
    return ExitCause.EXIT if ex.exit_code == 0 else ExitCause.CRASH


def decide_exit(ex: ExitRecord, failures: int, planned: bool, s: SupervisorSection,
                stalled: bool = False) -> ExitDecision:
    """What an exit of an assigned worker leads to.

    A planned stop (an operator's kill) is no failure: restart at once, counters unchanged. A
    run that lasted ``healthy_after_s`` starts the count afresh whatever its exit code (a worker
    that crashes once a day never ends up crash-looping); if it also exited 0 it is no failure.
    A worker killed because its PID 1 stayed stopped (``stalled``) failed, however long it ran.
    """
    cause = ExitCause.STALLED if stalled and not planned else exit_cause(ex, planned)
    if planned:
        return ExitDecision(failures, 0.0, Phase.EXITED, cause)
    ran = seconds_between(ex.started_at, ex.finished_at)
    healthy = ran is not None and ran >= s.healthy_after_s
    if healthy:
        failures = 0
        if ex.exit_code == 0 and not stalled:
            return ExitDecision(0, 0.0, Phase.EXITED, cause)
    failures += 1
    phase = Phase.CRASH_LOOPING if failures >= s.crashloop_after else Phase.BACKOFF
    return ExitDecision(failures, backoff_delay(failures, s), phase, cause)


def permanent(exc: BaseException) -> bool:
    """A launch error that no retry can fix: the assignment is rejected until it changes."""
    if isinstance(exc, PERMANENT):
        return True
    if isinstance(exc, LaunchError):
        return exc.step == "image" or isinstance(exc.__cause__, PERMANENT)
    return False


@dataclass(frozen=True)
class LaunchDecision:
    phase: Phase
    reason: str
    failures: int
    delay: float | None
    """Seconds until it is tried again on its own (None: when it fits, or when it is assigned again)."""


def decide_launch_error(exc: BerthError, failures: int, s: SupervisorSection) -> LaunchDecision:
    """What a refused launch means: no room on the node now (``no-capacity``: no failure counted,
    launched once it fits), never as given (``rejected``), or a failure retried with backoff."""
    if isinstance(exc, CapacityError):
        return LaunchDecision(Phase.NO_CAPACITY, f"waiting for capacity: {exc}", failures, None)
    if permanent(exc):
        return LaunchDecision(Phase.REJECTED, f"cannot launch as assigned: {exc}", failures, None)
    return LaunchDecision(Phase.FAILED, f"launch failed: {exc}", failures + 1, backoff_delay(failures + 1, s))
