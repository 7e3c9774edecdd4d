"""Setting the worker-launcher up: its storm.yaml keys, the check that Storm's supervisor can reach
berth's socket, the program ``berth worker-launcher install`` writes, the bounded tree walk."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import ConfigError
from berth._cli.launcher import install_program
from berth._core.config import config_from_mapping
from berth._core.tomlout import config_toml
from berth._exceptions import CleanupError
from berth._node.launcher import LauncherPolicy, resolve_policy
from berth._node.workdirs import remove_at
from berth._storm.yaml import config_from_storm


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp dirs are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="berth-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


STORM = {"storm.home": "/opt/storm", "storm.local.dir": "/var/storm", "storm.log.dir": "/var/log/storm"}


def test_storm_yaml_names_the_launchers_settings_as_storms_launcher_cfg_does() -> None:
    config = config_from_storm({**STORM, "berth.storm.supervisor.user": "berth-dave",
                                "berth.storm.launcher.group": "berth-team", "berth.min.user.id": 2000,
                                "berth.banned.users": "berth-bob"})
    assert config.storm is not None
    assert (config.storm.supervisor_user, config.storm.launcher_group) == ("berth-dave", "berth-team")
    assert (config.node.min_uid, config.node.banned_users) == (2000, ("berth-bob",))
    assert config.storm.unused_keys == ()
    toml = config_toml(config)
    assert "[node]\n" in toml and "min_uid = 2000\nbanned_users = [\"berth-bob\"]" in toml
    assert 'supervisor_user = "berth-dave"\nlauncher_group = "berth-team"' in toml


@pytest.mark.parametrize(("key", "value", "error"), [
    ("berth.min.user.id", "1000", "berth.min.user.id: Input should be a valid integer"),
    ("berth.banned.users", 3, "berth.banned.users: must be a string or a list of strings, got 3"),
    ("berth.min.user.ids", 1000, "berth.min.user.ids: unknown key: no Storm version defines it "
                                 "(did you mean berth.min.user.id?)"),
])
def test_bad_launcher_keys_name_the_storm_key(key: str, value: object, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_storm({**STORM, key: value})
    assert str(info.value) == error


def test_the_launcher_follows_the_plugins_settings(tmp_path: Path) -> None:
    """One supervisor user and one launcher group for the node: the plugin's (``StormDirs``)."""
    def policy(**storm: object) -> object:
        return resolve_policy(config_from_mapping({
            "node": {"name": "n", "local_dir": str(tmp_path / "l"), "log_dir": str(tmp_path / "g"),
                     "state_dir": str(tmp_path / "s")}, "storm": storm}))

    assert policy() is None  # no supervisor user: the launcher answers no one
    mine = policy(supervisor_user="berth-dave")
    assert isinstance(mine, LauncherPolicy) and (mine.supervisor_uid, mine.gid) == (2104, 2300)
    other = policy(supervisor_user="berth-dave", launcher_group="berth-shared")
    assert isinstance(other, LauncherPolicy) and other.gid == 2200
    with pytest.raises(ConfigError, match=r"^berth\.storm\.launcher\.group: no such group 'nope-group'"):
        policy(supervisor_user="berth-dave", launcher_group="nope-group")
    with pytest.raises(ConfigError, match=r"^berth\.storm\.supervisor\.user: no such user 'nope-user'"):
        policy(supervisor_user="nope-user")


@pytest.mark.skipif(os.geteuid() != 0, reason="the program is checked to be root's alone")
def test_install_writes_a_plain_program_that_runs_anywhere(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    dest = tmp_path / "berth-worker-launcher"
    python = install_program(str(dest))
    st = os.stat(dest)
    assert stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (0, 0)
    assert dest.read_text().startswith(f"#!{python} -IS\n")
    done = subprocess.run([str(dest), "berth-alice", "rmr", "/x"], env={"BERTH_SOCKET": str(tmp_path / "none")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 24 and "berth is not answering" in done.stderr
    install_program(str(dest), socket="/run/berth-elsewhere/api.sock")  # Storm gives it no environment
    done = subprocess.run([str(dest), "berth-alice", "rmr", "/x"], env={}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 24 and "not answering on /run/berth-elsewhere/api.sock" in done.stderr
    with pytest.raises(ConfigError, match=r"^socket: must be an absolute path"):
        install_program(str(dest), socket="api.sock")
    os.chmod(dest, 0o4755)
    done = subprocess.run([str(dest), "berth-alice", "rmr", "/x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 22  # a setuid copy refuses to run
    install_program(str(dest))  # replaced whole, and never setuid again
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="the program is checked to be root's alone")
def test_install_refuses_a_link_and_a_directory_others_could_write(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "link").symlink_to("/usr/bin/true")
    with pytest.raises(ConfigError, match="exists and is not a plain file"):
        install_program(str(tmp_path / "link"))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ConfigError,
                       match=r"^dest: .*shared is writable by everyone \(mode 0777\); the worker-launcher Storm runs"):
        install_program(str(shared / "berth-worker-launcher"))
    with pytest.raises(ConfigError, match="must be an absolute path"):
        install_program("relative/berth-worker-launcher")


def test_a_tree_walk_stops_at_its_deadline(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(CleanupError, match="not removed in the time allowed"):
            remove_at(fd, "top", str(top), deadline=time.monotonic() - 1)
    finally:
        os.close(fd)
    assert (top / "a" / "b").is_dir()


def test_one_huge_directory_is_stopped_inside_its_scan(tmp_path: Path) -> None:
    from berth._node import workdirs

    for i in range(5000):
        (tmp_path / f"f{i}").write_text("")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(CleanupError, match="not removed in the time allowed"):
            workdirs._scan(fd, os.fstat(fd).st_dev, str(tmp_path), 1, 512, deadline=time.monotonic() - 1)
    finally:
        os.close(fd)
    assert 0 < len(os.listdir(tmp_path)) < 5000  # it went on until it looked at the time, then stopped
