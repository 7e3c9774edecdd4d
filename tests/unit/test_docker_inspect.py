"""The engine's reports as berth's runtime-neutral values: log limits, the OOM victim, a stopped PID 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth._core.plan import LogLimits
from berth._linux.proc import is_stopped
from berth._runtimes.docker.inspect import log_limits, oom_victim


@pytest.mark.parametrize(("config", "limits"), [
    ({"Type": "json-file", "Config": {"max-size": "20m", "max-file": "5"}}, LogLimits(20, 5)),
    ({"Type": "json-file", "Config": {"max-size": "1g"}}, LogLimits(1024, 1)),
    ({"Type": "json-file", "Config": {"max-size": "1500k", "max-file": "2"}}, LogLimits(2, 2)),  # rounded up
    ({"Type": "json-file", "Config": {}}, None),  # Docker's default: one file, never rotated
    ({"Type": "local", "Config": {}}, LogLimits(20, 5)),  # the local driver's own defaults
    ({"Type": "local", "Config": {"max-size": "10m"}}, LogLimits(10, 5)),
    ({"Type": "none", "Config": {}}, LogLimits(0, 0)),
    ({"Type": "syslog", "Config": {"max-size": "1m"}}, None),  # shipped elsewhere
    (None, None),
])
def test_log_limits(config: dict[str, Any] | None, limits: LogLimits | None) -> None:
    assert log_limits(config) == limits


def test_oom_victim_from_the_engines_flag_and_the_workers_status() -> None:
    assert oom_victim(False, 137) is None  # any SIGKILL is not an OOM kill
    assert oom_victim(True, 137) == "worker"
    assert oom_victim(True, 0) == "child"  # a child was killed; the worker went on
    assert oom_victim(True, 1) == "child"


def test_a_stopped_or_traced_process_is_told_from_its_stat(tmp_path: Path) -> None:
    for pid, state in ((10, "S"), (11, "t"), (12, "T"), (13, "Z")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (odd ) name) {state} 1 {pid} {pid} 0 -1\n")
    assert [is_stopped(p, str(tmp_path)) for p in (10, 11, 12, 13, 99)] == [False, True, True, False, False]


def test_a_container_made_by_hand_with_odd_labels_is_listed_not_a_crash() -> None:
    """Anyone with the engine's socket can label a container as this node's; a port label that is not
    a number made the whole listing (``ps``, every reconcile) raise. The labels are decoded by the
    one helper every runtime uses: a bad value reads as absent."""
    from berth._runtimes.docker.runtime import DockerRuntime

    listed = {"Id": "c1", "State": "running", "Status": "Up 1 second", "Image": "x",
              "Labels": {"berth.worker": "w1", "berth.port": "sixty-seven", "berth.node": "n"}}
    state = DockerRuntime._state_from_list(listed)
    assert (state.worker_id, state.port) == ("w1", 0)
    inspected = {"Id": "c1", "Config": {"Image": "x", "Labels": listed["Labels"]},
                 "State": {"Status": "running", "Pid": 0}}
    assert DockerRuntime._state(inspected).port == 0
