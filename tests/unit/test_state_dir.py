"""berth's own state is kept apart from everything a worker can write (issue 9.5), and a claim
per worker id makes one launch of an id at a time, across processes (issue 9.10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from berth import ConfigError, LaunchError, NodeConfig, PolicyError
from berth._core.config import DEFAULT_STATE_DIR, config_from_mapping
from berth._node.state import StateDir


def _config(**node: Any) -> NodeConfig:
    return config_from_mapping({"node": {"name": "n1", "local_dir": "/data/storm", "log_dir": "/logs/storm", **node}})


def test_the_default_state_dir_is_not_under_the_workers_dirs() -> None:
    cfg = _config()
    assert cfg.state_dir == DEFAULT_STATE_DIR == "/var/lib/berth/state"
    assert not cfg.state_dir.startswith(("/data/storm/", "/logs/storm/"))


@pytest.mark.parametrize(("node", "words"), [
    ({"state_dir": "/data/storm/berth"}, "node.state_dir (/data/storm/berth) must not be under node.local_dir"),
    ({"state_dir": "/data/storm"}, "node.state_dir (/data/storm) must not be under node.local_dir"),
    ({"state_dir": "/logs/storm/state"}, "must not be under node.log_dir"),
    ({"state_dir": "/data", "local_dir": "/data/storm"}, "must not contain node.local_dir"),
    ({"state_dir": "/srv/a", "artifacts_dir": "/srv/a/art"}, "must not contain node.artifacts_dir"),
    ({"local_dir": "/var/lib/berth"}, "node.state_dir (/var/lib/berth/state) must not be under node.local_dir"),
])
def test_a_state_dir_where_workers_write_is_refused(node: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(**node)
    assert info.value.field == "node" and words in info.value.reason


def test_start_check_creates_a_private_state_dir(tmp_path: Path) -> None:
    cfg = _config(state_dir=str(tmp_path / "a" / "state"))
    StateDir(cfg).check()
    st = os.stat(tmp_path / "a" / "state")
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.geteuid())


def test_start_check_refuses_a_symlinked_or_shared_state_dir(tmp_path: Path) -> None:
    (tmp_path / "local" / "workers").mkdir(parents=True)
    (tmp_path / "state").symlink_to(tmp_path / "local" / "workers")
    cfg = _config(state_dir=str(tmp_path / "state"), local_dir=str(tmp_path / "local"))
    with pytest.raises(ConfigError) as info:
        StateDir(cfg).check()
    assert info.value.field == "node.state_dir" and "resolves to" in info.value.reason
    (tmp_path / "state").unlink()
    (tmp_path / "state").mkdir(mode=0o777)
    os.chmod(tmp_path / "state", 0o777)
    with pytest.raises(ConfigError) as info:
        StateDir(cfg).check()
    assert "writable by others" in info.value.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind needs root")
def test_start_check_refuses_a_state_dir_it_cannot_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "berth-unit-state", str(state)], check=True)
    try:
        with pytest.raises(ConfigError) as info:
            StateDir(_config(state_dir=str(state))).check()
        assert info.value.field == "node.state_dir" and "not writable" in info.value.reason
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_one_claim_per_worker_id(tmp_path: Path) -> None:
    state = StateDir(_config(state_dir=str(tmp_path / "state")))
    with state.claim("w1"):
        with pytest.raises(PolicyError) as info, state.claim("w1"):
            pass
        assert (info.value.field, info.value.reason) == (
            "worker_id", "a launch of 'w1' is already under way (another berth process or thread holds it)")
        with state.claim("w2"):
            pass
    with state.claim("w1"):
        pass
    assert os.listdir(tmp_path / "state" / "claims") == []  # nothing left behind


def test_a_claim_holds_across_processes(tmp_path: Path) -> None:
    state = StateDir(_config(state_dir=str(tmp_path / "state")))
    code = ("import sys; from berth._core.config import config_from_mapping; from berth._node.state import StateDir\n"
            "cfg = config_from_mapping({'node': {'name': 'n1', 'local_dir': '/data/storm', 'log_dir': '/l', "
            "'state_dir': sys.argv[1]}})\n"
            "try:\n    with StateDir(cfg).claim('w1'): print('claimed')\n"
            "except Exception as exc: print(type(exc).__name__, exc)\n")
    with state.claim("w1"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], capture_output=True, text=True)
    assert out.stdout.startswith("PolicyError worker_id: a launch of 'w1' is already under way"), out.stderr
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], capture_output=True, text=True)
    assert out.stdout == "claimed\n"


def test_a_claim_in_an_unwritable_state_dir_is_a_launch_error_at_state(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file, not a directory")
    with pytest.raises(LaunchError) as info, StateDir(_config(state_dir=str(tmp_path / "state"))).claim("w1"):
        pass
    assert info.value.step == "state" and "not writable" in info.value.reason
