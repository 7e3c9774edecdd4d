"""Which users may run workers: allowed_users, allowed_groups, banned_users (issue 9.6), and the
node config itself being root's to write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from berth import ConfigError, Identity, IdentityError, NodeConfig, build_plan, load_config, spec_from_mapping
from berth._core.config import config_from_mapping

from .conftest import FOUR_CPUS

ALICE = Identity("alice", 3001, 3001, (3001, 3500), group_names=("alice", "storm-users"))
BOB = Identity("bob", 3002, 3002, (3002,), group_names=("bob",))
NOBODY = Identity("nobody", 65534, 65534, (65534,), group_names=("nogroup",))


def _config(**node: Any) -> NodeConfig:
    return config_from_mapping({"node": {"name": "n1", "local_dir": "/data/storm", "log_dir": "/logs/storm", **node},
                                "images": {"default": "storm/worker:2.6"},
                                "container": {"mount_cgroup_root": False}})


def _plan(config: NodeConfig, ident: Identity) -> Any:
    spec = spec_from_mapping({"worker_id": "w1", "topology_id": "t1", "port": 6700, "user": ident.user,
                              "command": ["true"]})
    return build_plan(spec, config, ident, FOUR_CPUS)


def _refused(config: NodeConfig, ident: Identity) -> str:
    with pytest.raises(IdentityError) as info:
        _plan(config, ident)
    assert info.value.field == "user"
    return info.value.reason


def test_without_allow_lists_any_unbanned_user_above_min_uid_may_run() -> None:
    assert _plan(_config(), BOB).identity == BOB


def test_nobody_is_banned_by_default() -> None:
    assert _config().node.banned_users == ("bin", "nobody")
    assert "banned" in _refused(_config(), NOBODY)


def test_allowed_users_refuses_everyone_else() -> None:
    cfg = _config(allowed_users=("alice",))
    assert _plan(cfg, ALICE).identity.user == "alice"
    assert _refused(cfg, BOB) == ("'bob' may not run workers on this node: not in node.allowed_users, "
                                  "nor a member of a group in node.allowed_groups")


def test_allowed_groups_admits_members_of_any_of_the_users_groups() -> None:
    cfg = _config(allowed_groups=("storm-users",))
    assert _plan(cfg, ALICE).identity.user == "alice"  # a supplementary group counts
    assert "may not run workers" in _refused(cfg, BOB)
    both = _config(allowed_users=("bob",), allowed_groups=("storm-users",))
    assert _plan(both, ALICE) and _plan(both, BOB)


def test_banned_wins_over_allowed() -> None:
    cfg = _config(allowed_users=("alice",), allowed_groups=("storm-users",), banned_users=("alice",))
    assert "'alice' is banned" in _refused(cfg, ALICE)


def test_the_allow_lists_take_user_and_group_names() -> None:
    with pytest.raises(ConfigError) as info:
        _config(allowed_users=("bob smith",))
    assert info.value.field == "node.allowed_users"
    with pytest.raises(ConfigError) as info:
        _config(allowed_groups=("",))
    assert info.value.field == "node.allowed_groups"


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when berth runs as root")
@pytest.mark.parametrize(("owner", "mode", "words"), [
    ((1234, 0), 0o644, "owned by uid 1234"),
    ((0, 1234), 0o664, "writable by group 1234"),
    ((0, 0), 0o646, "writable by everyone"),
])
def test_a_config_others_can_write_is_refused(tmp_path: Path, owner: tuple[int, int], mode: int, words: str) -> None:
    f = tmp_path / "berth.toml"
    f.write_text('[node]\nallowed_users = ["alice"]\n')
    os.chown(f, *owner)
    os.chmod(f, mode)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.field == "config" and words in info.value.reason
    os.chown(f, 0, 0)
    os.chmod(f, 0o644)
    assert load_config(f).node.allowed_users == ("alice",)


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when berth runs as root")
def test_a_config_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "etc-berth"
    d.mkdir()
    f = d / "berth.toml"
    f.write_text("")
    os.chmod(d, 0o777)  # anyone could replace the file (no sticky bit)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.field == "config" and f"{d} is writable by everyone" in info.value.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when berth runs as root")
def test_a_config_reached_through_a_link_others_could_repoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    real = tmp_path / "etc" / "berth.toml"
    real.write_text("")
    home = tmp_path / "home-alice"
    home.mkdir()
    os.chown(home, 1234, 1234)  # a tenant's own directory: the link in it is the tenant's to change
    (home / "berth.toml").symlink_to(real)
    with pytest.raises(ConfigError) as info:
        load_config(home / "berth.toml")
    assert f"{home} is owned by uid 1234" in info.value.reason
    assert load_config(real).node.name


TOKENS = ('[api]\ntoken = "operator-token-0123456789"\n',
          '[[api.tenants]]\nname = "a"\ntoken = "tenant-token-0123456789"\nusers = ["alice"]\n')


@pytest.mark.parametrize("text", TOKENS)
@pytest.mark.parametrize(("owner", "mode", "words"), [
    ((0, 0), 0o644, "is readable by others (mode 0644)"),
    ((0, 1234), 0o640, "is readable by others (mode 0640)"),
    ((0, 0), 0o640, "is readable by others (mode 0640)"),  # group root may have members too
    ((0, 0), 0o604, "is readable by others (mode 0604)"),
])
def test_a_config_holding_tokens_that_others_can_read_is_refused(tmp_path: Path, text: str, owner: tuple[int, int],
                                                                 mode: int, words: str) -> None:
    """Issue 18 item 10: a token in a config others can read is anyone's token."""
    f = tmp_path / "berth.toml"
    f.write_text(text)
    os.chown(f, *owner)
    os.chmod(f, mode)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    key = "api.token" if "[api]" in text else "api.tenants"
    assert info.value.field == "config"
    assert info.value.reason == f"{f} holds tokens ({key}) and {words}; chmod 600 it"
    os.chmod(f, 0o600)
    assert load_config(f).api.tenants or load_config(f).api.token


def test_a_config_without_tokens_may_be_read_by_all(tmp_path: Path) -> None:
    f = tmp_path / "berth.toml"
    f.write_text('[api]\nsocket_mode = "0660"\n')
    os.chmod(f, 0o644)
    assert load_config(f).api.token is None
