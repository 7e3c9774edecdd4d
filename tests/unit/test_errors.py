"""Bad requests and bad configs: each gives the expected typed error naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth import (
    BerthError,
    ConfigError,
    Identity,
    IdentityError,
    PolicyError,
    SpecError,
    build_plan,
    spec_from_mapping,
)
from berth._storm.loading import checked_config as config_from_mapping
from berth._storm.loading import load_config
from berth._storm.yaml import config_from_storm

from .conftest import ALICE, FOUR_CPUS, make_config

GOOD: dict[str, Any] = {"worker_id": "w1", "topology_id": "topo-1", "port": 6700, "user": "alice",
                        "command": ["python3", "-m", "worker"]}

BAD_REQUESTS: list[tuple[str, dict[str, Any], type[BerthError], str]] = [
    ("slash in id", {"worker_id": "a/b"}, SpecError, "worker_id"),
    ("dotdot id", {"worker_id": ".."}, SpecError, "worker_id"),
    ("NUL in id", {"worker_id": "w\0"}, SpecError, "worker_id"),
    ("long id", {"worker_id": "w" * 129}, SpecError, "worker_id"),
    ("look-alike id", {"worker_id": "w\u0131"}, SpecError, "worker_id"),
    ("empty id", {"worker_id": ""}, SpecError, "worker_id"),
    ("topology slash", {"topology_id": "../etc"}, SpecError, "topology_id"),
    ("port 0", {"port": 0}, SpecError, "port"),
    ("port 70000", {"port": 70000}, SpecError, "port"),
    ("port as string", {"port": "6700"}, SpecError, "port"),
    ("port as bool", {"port": True}, SpecError, "port"),
    ("unknown key", {"memory": 256}, SpecError, "memory"),
    ("missing command", {"command": None}, SpecError, "command"),
    ("empty command", {"command": []}, SpecError, "command"),
    ("NUL in argv", {"command": ["a", "b\0c"]}, SpecError, "command"),
    ("command is a string", {"command": "python3 -m worker"}, SpecError, "command"),
    ("env name with =", {"env": {"A=B": "x"}}, SpecError, "env"),
    ("env name with space", {"env": {"A B": "x"}}, SpecError, "env"),
    ("env value NUL", {"env": {"A": "x\0"}}, SpecError, "env"),
    ("env value not a string", {"env": {"A": 1}}, SpecError, "env.A"),
    ("env owned by shell", {"env": {"SHLVL": "3"}}, SpecError, "env"),
    ("memory zero", {"memory_mb": 0}, SpecError, "memory_mb"),
    ("cpu negative", {"cpu_percent": -5}, SpecError, "cpu_percent"),
    ("cores empty", {"cores": []}, SpecError, "cores"),
    ("cores duplicate", {"cores": [1, 1]}, SpecError, "cores"),
    ("pids zero", {"pids_limit": 0}, SpecError, "pids_limit"),
    ("user with slash", {"user": "a/b"}, SpecError, "user"),
    ("malformed image", {"image": "UPPER/Case"}, SpecError, "image"),
    ("image not allowed", {"image": "evil/miner:latest"}, PolicyError, "image"),
    ("cpu above node", {"cpu_percent": 500}, PolicyError, "cpu_percent"),
    ("core not on node", {"cores": [0, 7]}, PolicyError, "cores"),
    ("numa node missing", {"numa_node": 3}, PolicyError, "numa_node"),
    ("pids above max", {"pids_limit": 10**6}, PolicyError, "pids_limit"),
]


@pytest.mark.parametrize(("case", "change", "kind", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request(node_paths: dict[str, Path], case: str, change: dict[str, Any],
                     kind: type[BerthError], field: str) -> None:
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(kind) as info:
        spec = spec_from_mapping(data)
        build_plan(spec, make_config(node_paths), ALICE, FOUR_CPUS)
    assert info.value.field is not None and info.value.field.startswith(field), str(info.value)
    assert str(info.value).startswith(field)


BAD_IDENTITIES: list[tuple[str, Identity, str]] = [
    ("root", Identity("alice", 0, 0, (0,)), "root"),
    ("low uid", Identity("alice", 999, 1001, (1001,)), "min_uid"),
    ("root group", Identity("alice", 1001, 1001, (1001, 0)), "group 0"),
    ("banned", Identity("bin", 5000, 5000, (5000,)), "banned"),
]


@pytest.mark.parametrize(("case", "ident", "words"), BAD_IDENTITIES, ids=[c[0] for c in BAD_IDENTITIES])
def test_bad_identity(node_paths: dict[str, Path], case: str, ident: Identity, words: str) -> None:
    spec = spec_from_mapping({**GOOD, "user": ident.user})
    with pytest.raises(IdentityError, match=words) as info:
        build_plan(spec, make_config(node_paths), ident, FOUR_CPUS)
    assert info.value.field == "user"


def test_unknown_user() -> None:
    from berth import resolve_identity

    with pytest.raises(IdentityError, match="no such user"):
        resolve_identity("no-such-user-berth")


BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("relative local dir", {"node": {"local_dir": "var/lib"}}, "node.local_dir"),
    ("unknown table key", {"node": {"locl_dir": "/x"}}, "node.locl_dir"),
    ("unknown table", {"nodes": {}}, "nodes"),
    ("bad runtime", {"node": {"runtime": "lxc"}}, "node.runtime"),
    ("min uid as string", {"node": {"min_uid": "1000"}}, "node.min_uid"),
    ("bad default image", {"images": {"default": "Bad Image"}}, "images.default"),
    ("bad allowed image", {"images": {"allowed": ("ok/x", "NOT OK")}}, "images.allowed"),
    ("unconfined seccomp", {"container": {"seccomp_profile": "unconfined"}}, "container.seccomp_profile"),
    ("bad umask", {"container": {"umask": "777x"}}, "container.umask"),
    ("bad cgroup parent", {"container": {"cgroup_parent": "/a/../b"}}, "container.cgroup_parent"),
    ("colon in mount", {"container": {"readonly_mounts": ("/a:b",)}}, "container.readonly_mounts"),
    ("shell with spaces", {"container": {"shell": "bash -x"}}, "container.shell"),
    ("pids above max", {"container": {"pids_limit": 100, "max_pids_limit": 10}}, "container"),
    ("docker host scheme", {"node": {"docker_host": "/var/run/docker.sock"}}, "node.docker_host"),
    ("local dir under install dir", {"node": {"install_dir": "/opt/storm", "local_dir": "/opt/storm/data"}},
     "node.local_dir"),
]


@pytest.mark.parametrize(("case", "data", "field"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config(case: str, data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)
    assert field in str(info.value)


@pytest.mark.parametrize(("mount", "kind"), [
    ("/", PolicyError), ("/etc", PolicyError), ("/var/run", PolicyError), ("/proc/1", PolicyError),
    ("/etc/shadow", PolicyError), ("/sys", PolicyError), ("/nonexistent-berth-dir", ConfigError),
])
def test_forbidden_or_missing_mounts_refused(node_paths: dict[str, Path], mount: str, kind: type[BerthError]) -> None:
    spec = spec_from_mapping(GOOD)
    with pytest.raises(kind) as info:
        build_plan(spec, make_config(node_paths, readwrite_mounts=(mount,)), ALICE, FOUR_CPUS)
    assert info.value.field == "container.readwrite_mounts[0]"


def test_mount_symlink_into_forbidden_path_refused(node_paths: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(PolicyError, match="forbidden"):
        build_plan(spec_from_mapping(GOOD), make_config(node_paths, readonly_mounts=(str(link),)), ALICE, FOUR_CPUS)


def test_mount_under_local_dir_refused(node_paths: dict[str, Path], tmp_path: Path) -> None:
    local = tmp_path / "local"
    (local / "workers" / "other").mkdir(parents=True)
    config = config_from_mapping({"node": {"local_dir": str(local), "log_dir": str(tmp_path / "log")},
                                  "images": {"default": "a/b"},
                                  "container": {"readwrite_mounts": (str(local / "workers" / "other"),)}})
    with pytest.raises(PolicyError, match="forbidden"):
        build_plan(spec_from_mapping(GOOD), config, ALICE, FOUR_CPUS)


def test_etc_storm_like_mount_is_fine(node_paths: dict[str, Path]) -> None:
    plan = build_plan(spec_from_mapping(GOOD), make_config(node_paths), ALICE, FOUR_CPUS)
    assert any(m.source == str(node_paths["ro"]) and m.read_only for m in plan.mounts)


def test_duplicate_mount_target_refused(node_paths: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="already used"):
        build_plan(spec_from_mapping(GOOD), make_config(node_paths, readwrite_mounts=(str(node_paths["ro"]),)),
                   ALICE, FOUR_CPUS)


def test_no_image_anywhere_is_an_error_not_a_silent_return(node_paths: dict[str, Path]) -> None:
    config = config_from_mapping({"node": {"local_dir": "/d", "log_dir": "/l"}})
    with pytest.raises(PolicyError, match="no default"):
        build_plan(spec_from_mapping(GOOD), config, ALICE, FOUR_CPUS)


def test_empty_allowed_list_allows_only_the_default(node_paths: dict[str, Path]) -> None:
    config = config_from_mapping({"node": {"local_dir": "/d", "log_dir": "/l"}, "images": {"default": "a/b:1"},
                                  "container": {"mount_cgroup_root": False}})
    assert build_plan(spec_from_mapping({**GOOD, "image": "a/b:1"}), config, ALICE, FOUR_CPUS).image == "a/b:1"
    with pytest.raises(PolicyError, match="only its default"):
        build_plan(spec_from_mapping({**GOOD, "image": "a/c:1"}), config, ALICE, FOUR_CPUS)


def test_star_allows_any_valid_name(node_paths: dict[str, Path]) -> None:
    config = config_from_mapping({"node": {"local_dir": "/d", "log_dir": "/l"}, "images": {"allowed": ("*",)},
                                  "container": {"mount_cgroup_root": False}})
    assert build_plan(spec_from_mapping({**GOOD, "image": "reg.io:5000/x/y:2"}), config, ALICE,
                      FOUR_CPUS).image == "reg.io:5000/x/y:2"
    with pytest.raises(SpecError):
        build_plan(spec_from_mapping({**GOOD, "image": "x y"}), config, ALICE, FOUR_CPUS)


def test_storm_yaml_errors_name_the_storm_key() -> None:
    with pytest.raises(ConfigError, match=r"^storm\.oci\.image: "):
        config_from_storm({"storm.oci.image": "NOT VALID"}, env={"STORM_HOME": "/opt/storm"})
    with pytest.raises(ConfigError, match=r"^storm\.oci\.imagez: unknown key"):
        config_from_storm({"storm.oci.imagez": "a/b"})


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "berth.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    y = tmp_path / "storm.yaml"
    y.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(y)
    for big in (bad, y):  # a node config is read up to a bound, like every file berth reads
        big.write_text("#" * (4 * 1024 * 1024 + 1))
        with pytest.raises(ConfigError, match=r"^config: .* is larger than 4194304 bytes"):
            load_config(big)


def test_all_bad_fields_are_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        spec_from_mapping({**GOOD, "port": 0, "worker_id": "a/b"})
    assert "worker_id" in str(info.value) and "port" in str(info.value)


def _causes_dropped() -> list[str]:
    """``raise … from None`` inside an ``except … as exc`` that bound the error it maps."""
    import ast

    src = Path(__file__).resolve().parents[2] / "src" / "berth"
    found = []
    for path in sorted(src.rglob("*.py")):
        for handler in ast.walk(ast.parse(path.read_text())):
            if not isinstance(handler, ast.ExceptHandler) or not handler.name or handler.type is None:
                continue
            if ast.unparse(handler.type) == "ValidationError":
                continue  # pydantic's: the mapped error already names every field and reason
            for node in ast.walk(handler):
                if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant) and node.cause.value is None:
                    found.append(f"{path.relative_to(src)}:{node.lineno}")
    return found


def test_a_mapped_error_keeps_the_original_as_its_cause() -> None:
    """_exceptions: a backend's own exception (OSError, the engine's, ZooKeeper's, a parser's) is kept
    as ``__cause__``, for logs and for callers that look at it (the supervisor's ``permanent``)."""
    assert _causes_dropped() == []
