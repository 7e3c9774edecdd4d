"""Waiting, in tests, for state another process owns: bounded polling, never a bare sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest


def poll_until(pred: Callable[[], bool], what: str, timeout: float = 120.0, every: float = 0.05) -> None:
    """For state owned by *another process* (a worker, a berth child): check, wait a tick, repeat.

    Bounded by ``timeout``; in-process state is waited for on events instead.
    """
    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        tick.wait(every)
