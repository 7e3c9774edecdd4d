"""Hostile requests: every bad field is a typed error naming it, and no request, however odd,
puts a path outside the node's directories or an unquoted token in the worker script.

The table covers the classic attacks by hand; hypothesis then fuzzes the same entry points
(``spec_from_mapping`` then ``build_plan`` with a fixed identity and host) for the properties.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from berth import (
    BerthError,
    Identity,
    IdentityError,
    PolicyError,
    SpecError,
    build_plan,
    load_spec,
    resolve_identity,
    spec_from_mapping,
)
from berth._core.config import config_from_mapping
from berth._core.spec import ENV_NAME, ID_PATTERN, SHELL_RESERVED, read_spec_file

from .conftest import ALICE, FOUR_CPUS

LOCAL, LOG = "/data/storm", "/logs/storm"
CONFIG = config_from_mapping({
    "node": {"name": "n1", "local_dir": LOCAL, "log_dir": LOG},
    "images": {"default": "storm/worker:2.6", "allowed": ("storm/py:3",)},
    "container": {"mount_cgroup_root": False},  # no host path at all: the plan is then pure
})
GOOD: dict[str, Any] = {"worker_id": "w1", "topology_id": "topo-1", "port": 6700, "user": "alice",
                        "command": ["python3", "-m", "worker"]}


def _plan(data: dict[str, Any], identity: Identity = ALICE) -> Any:
    return build_plan(spec_from_mapping(data), CONFIG, identity, FOUR_CPUS)


HOSTILE: list[tuple[str, dict[str, Any], type[BerthError], str]] = [
    # ids become path components and container names
    ("id with slash", {"worker_id": "a/b"}, SpecError, "worker_id"),
    ("id dot-dot", {"worker_id": ".."}, SpecError, "worker_id"),
    ("id dot", {"worker_id": "."}, SpecError, "worker_id"),
    ("id climbing", {"worker_id": "../../etc"}, SpecError, "worker_id"),
    ("id hidden", {"worker_id": ".bashrc"}, SpecError, "worker_id"),
    ("id like an option", {"worker_id": "-rf"}, SpecError, "worker_id"),
    ("id with NUL", {"worker_id": "w1\0x"}, SpecError, "worker_id"),
    ("id with newline", {"worker_id": "w1\nx"}, SpecError, "worker_id"),
    ("id with trailing space", {"worker_id": "w1 "}, SpecError, "worker_id"),
    ("id 129 chars", {"worker_id": "w" * 129}, SpecError, "worker_id"),
    ("id 10k chars", {"worker_id": "w" * 10_000}, SpecError, "worker_id"),
    ("id cyrillic a", {"worker_id": "w\u0430"}, SpecError, "worker_id"),
    ("id fullwidth slash", {"worker_id": "a\uff0fb"}, SpecError, "worker_id"),
    ("id division slash", {"worker_id": "a\u2215b"}, SpecError, "worker_id"),
    ("id zero-width space", {"worker_id": "w\u200b1"}, SpecError, "worker_id"),
    ("id right-to-left override", {"worker_id": "w\u202e1"}, SpecError, "worker_id"),
    ("id is a number", {"worker_id": 17}, SpecError, "worker_id"),
    ("topology climbing", {"topology_id": "../../../etc"}, SpecError, "topology_id"),
    ("topology with slash", {"topology_id": "t/x"}, SpecError, "topology_id"),
    ("topology look-alike", {"topology_id": "t\u0131"}, SpecError, "topology_id"),
    # ports
    ("port 0", {"port": 0}, SpecError, "port"),
    ("port 70000", {"port": 70000}, SpecError, "port"),
    ("port 65536", {"port": 65536}, SpecError, "port"),
    ("port negative", {"port": -1}, SpecError, "port"),
    ("port as text", {"port": "6700"}, SpecError, "port"),
    ("port as float", {"port": 6700.5}, SpecError, "port"),
    ("port as bool", {"port": True}, SpecError, "port"),
    ("port as path", {"port": "../6700"}, SpecError, "port"),
    # users (names; identities are below)
    ("user with slash", {"user": "../root"}, SpecError, "user"),
    ("user with space", {"user": "a b"}, SpecError, "user"),
    ("user with shell", {"user": "$(id)"}, SpecError, "user"),
    ("user with NUL", {"user": "alice\0"}, SpecError, "user"),
    ("user not a string", {"user": 0}, SpecError, "user"),
    # images
    ("image not allowed", {"image": "evil/miner:latest"}, PolicyError, "image"),
    ("image other registry", {"image": "registry.evil:5000/storm/worker:2.6"}, PolicyError, "image"),
    ("image upper case", {"image": "Storm/Worker"}, SpecError, "image"),
    ("image with space", {"image": "storm/worker 2.6"}, SpecError, "image"),
    ("image with shell", {"image": "storm/worker;rm -rf /"}, SpecError, "image"),
    ("image by digest", {"image": "storm/worker@sha256:" + "0" * 64}, SpecError, "image"),
    ("image with NUL", {"image": "storm/py:3\0"}, SpecError, "image"),
    ("image not a string", {"image": ["storm/py:3"]}, SpecError, "image"),
    # env names the shell would mangle, or that are not names
    ("env name with =", {"env": {"A=B": "x"}}, SpecError, "env"),
    ("env name with space", {"env": {"A B": "x"}}, SpecError, "env"),
    ("env name with dash", {"env": {"A-B": "x"}}, SpecError, "env"),
    ("env name leading digit", {"env": {"1A": "x"}}, SpecError, "env"),
    ("env name empty", {"env": {"": "x"}}, SpecError, "env"),
    ("env name unicode", {"env": {"\u00c4": "x"}}, SpecError, "env"),
    ("env name with shell", {"env": {"$(id)": "x"}}, SpecError, "env"),
    ("env name owned by bash", {"env": {"BASH_ENV": "/tmp/x"}}, SpecError, "env"),
    ("env name SHELLOPTS", {"env": {"SHELLOPTS": "xtrace"}}, SpecError, "env"),
    ("env value NUL", {"env": {"A": "a\0b"}}, SpecError, "env"),
    ("env as a list", {"env": ["A=1"]}, SpecError, "env"),
    # argv
    ("command a string", {"command": "rm -rf /"}, SpecError, "command"),
    ("command empty", {"command": []}, SpecError, "command"),
    ("program empty", {"command": ["", "x"]}, SpecError, "command"),
    ("argv NUL", {"command": ["echo", "a\0b"]}, SpecError, "command"),
    ("argv not strings", {"command": ["echo", 3]}, SpecError, "command"),
    # unknown keys and wrong types
    ("unknown key", {"privileged": True}, SpecError, "privileged"),
    ("unknown key cap_add", {"cap_add": ["SYS_ADMIN"]}, SpecError, "cap_add"),
    ("unknown key mounts", {"mounts": ["/:/host"]}, SpecError, "mounts"),
    ("unknown key network", {"network": "container:other"}, SpecError, "network"),
    ("memory as text", {"memory_mb": "1g"}, SpecError, "memory_mb"),
    ("memory as float", {"memory_mb": 1.5}, SpecError, "memory_mb"),
    ("memory below the engine's minimum", {"memory_mb": 5}, SpecError, "memory_mb"),
    ("cpu as bool", {"cpu_percent": True}, SpecError, "cpu_percent"),
    ("cores as a range string", {"cores": "0-3"}, SpecError, "cores"),
    ("cores negative", {"cores": [-1]}, SpecError, "cores"),
    ("pids negative", {"pids_limit": -1}, SpecError, "pids_limit"),
    # the node's limits
    ("cpu above the node", {"cpu_percent": 401}, PolicyError, "cpu_percent"),
    ("core the node lacks", {"cores": [4]}, PolicyError, "cores"),
    ("numa node the node lacks", {"numa_node": 1}, PolicyError, "numa_node"),
    ("pids above the node's max", {"pids_limit": 40_000}, PolicyError, "pids_limit"),
]


@pytest.mark.parametrize(("case", "change", "kind", "field"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_request_is_a_typed_error_naming_the_field(case: str, change: dict[str, Any],
                                                           kind: type[BerthError], field: str) -> None:
    with pytest.raises(BerthError) as info:
        _plan({**GOOD, **change})
    assert type(info.value) is kind, f"{case}: {type(info.value).__name__}: {info.value}"
    assert info.value.field is not None and info.value.field.startswith(field), str(info.value)
    assert str(info.value).startswith(f"{info.value.field}: ") and info.value.reason


HOSTILE_IDENTITIES: list[tuple[str, Identity, str]] = [
    ("root", Identity("alice", 0, 0, (0,)), "root"),
    ("root uid, other gid", Identity("alice", 0, 1001, (1001,)), "root"),
    ("root gid", Identity("alice", 1001, 0, (0,)), "root"),
    ("in group root", Identity("alice", 1001, 1001, (1001, 0)), "group 0"),
    ("system account", Identity("alice", 999, 999, (999,)), "min_uid"),
    ("banned", Identity("bin", 5000, 5000, (5000,)), "banned"),
]


@pytest.mark.parametrize(("case", "identity", "words"), HOSTILE_IDENTITIES, ids=[c[0] for c in HOSTILE_IDENTITIES])
def test_identities_that_may_not_run_workers(case: str, identity: Identity, words: str) -> None:
    with pytest.raises(IdentityError) as info:
        _plan({**GOOD, "user": identity.user}, identity)
    assert info.value.field == "user" and words in info.value.reason


def test_unknown_and_root_users_do_not_resolve() -> None:
    with pytest.raises(IdentityError, match="no such user 'berth-no-such-user'"):
        resolve_identity("berth-no-such-user")
    with pytest.raises(IdentityError, match="root"):
        resolve_identity("root", min_uid=0, banned=())
    with pytest.raises(IdentityError, match="min_uid"):
        resolve_identity("daemon")


def test_an_identity_for_another_user_is_refused() -> None:
    with pytest.raises(PolicyError, match="identity is for 'alice'"):
        _plan({**GOOD, "user": "bob"})


NASTY_VALUES = ["it's", '"quoted"', "a\nb", "$(id)", "`id`", "${HOME}", "a; rm -rf /", "&& true", "| cat",
                "> /etc/passwd", "\\", "'", "", " ", "-e", "--", "*", "~", "#comment", "\t", "é\u202e"]


def test_nasty_argv_and_env_values_are_accepted_and_reach_the_worker_verbatim() -> None:
    """Values are data, not syntax: refusing them would be wrong, quoting them is what is right."""
    plan = _plan({**GOOD, "command": ["prog", *NASTY_VALUES],
                  "env": {f"V{i}": v for i, v in enumerate(NASTY_VALUES)}})
    assert _script_tokens(plan.script) == _expected_tokens(plan.command, dict(plan.env), "0027")
    assert _through_bash(plan.command[1:], dict(plan.env)) == (list(NASTY_VALUES), dict(plan.env))


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("w.yaml", b"worker_id: [unclosed\n", "not valid YAML"),
    ("w.yaml", b"\x00\x01\x02binary\xff", "cannot read"),
    ("w.yaml", b"- a\n- list\n", "must hold a mapping"),
    ("w.yaml", b"just a string\n", "must hold a mapping"),
    ("w.yaml", b"", "must hold a mapping"),
    ("w.yaml", b"a: 1\n\tb: 2\n", "not valid YAML"),
    ("w.yaml", b"key: &a [*a]\nx: !!python/object/apply:os.system ['id']\n", "not valid YAML"),
    ("w.json", b"{worker_id: w1}", "not valid JSON"),
    ("w.json", b'["w1"]', "must hold a mapping"),
]


@pytest.mark.parametrize(("name", "content", "words"), BAD_FILES, ids=[f"{n}-{i}" for i, (n, _, _) in
                                                                        enumerate(BAD_FILES)])
def test_a_spec_file_that_is_not_a_spec_is_a_spec_error(tmp_path: Path, name: str, content: bytes,
                                                          words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "spec" and words in info.value.reason, str(info.value)


def test_a_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        read_spec_file(tmp_path / "absent.yaml")


def test_a_spec_file_with_unknown_keys_names_each(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("worker_id: w1\ntopology_id: t\nport: 6700\nuser: alice\ncommand: [x]\n"
                    "privileged: true\nvolumes: [/:/host]\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "privileged" in str(info.value) and "volumes" in str(info.value) and "unknown key" in str(info.value)


def test_a_one_character_worker_id_is_refused_up_front() -> None:
    with pytest.raises(SpecError):
        spec_from_mapping({**GOOD, "worker_id": "w"})


def test_an_image_name_that_is_an_option_is_refused() -> None:
    anything = CONFIG.model_copy(update={"images": CONFIG.images.model_copy(update={"allowed": ("*",)})})
    with pytest.raises(SpecError):
        build_plan(spec_from_mapping({**GOOD, "image": "--privileged"}), anything, ALICE, FOUR_CPUS)


# -- properties -------------------------------------------------------------------------------------

def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + "/")


texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
ids = st.one_of(st.from_regex(ID_PATTERN, fullmatch=True), texts,
                st.sampled_from(["..", ".", "../x", "a/../../b", "/etc", "a/b", "~", "w\u0430"]))
ports = st.one_of(st.integers(min_value=-5, max_value=70_000), st.sampled_from(["6700", "../1", 6700.0, None]))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(worker_id=ids, topology_id=ids, port=ports)
def test_no_request_puts_a_path_outside_the_node_dirs(worker_id: Any, topology_id: Any, port: Any) -> None:
    data = {**GOOD, "worker_id": worker_id, "topology_id": topology_id, "port": port}
    try:
        plan = _plan(data)
    except BerthError as exc:
        event(f"refused: {type(exc).__name__}")
        return  # refused, with a typed error: fine (anything else escapes and fails the test)
    event("planned")
    assert ID_PATTERN.fullmatch(plan.worker_id) and ID_PATTERN.fullmatch(plan.topology_id)
    for name, path in vars(plan.layout).items():
        resolved = os.path.realpath(path)
        assert resolved == path, (name, path)  # nothing to resolve: no '..', '.', '//' or link
        assert _under(resolved, LOCAL) or _under(resolved, LOG), (name, path)
    assert os.path.dirname(plan.layout.worker_root) == f"{LOCAL}/workers"
    assert os.path.dirname(plan.layout.artifacts) == f"{LOG}/workers-artifacts/{plan.topology_id}"
    for m in plan.mounts:
        assert m.target == "/tmp" or _under(m.target, LOCAL) or _under(m.target, LOG), m
        assert _under(os.path.realpath(m.source), LOCAL) or _under(os.path.realpath(m.source), LOG), m


def _expected_tokens(command: tuple[str, ...], env: dict[str, str], umask: str) -> list[str]:
    out: list[str] = []
    for k, v in env.items():
        out += ["export", f"{k}={v}", ";"]
    return [*out, "umask", umask, "exec", *command, ";"]


def _script_tokens(script: str) -> list[str]:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    return list(lexer)


values = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=30)
env_names = st.from_regex(ENV_NAME, fullmatch=True).filter(
    lambda n: len(n) < 30 and n not in SHELL_RESERVED and not n.startswith("BASH"))


@settings(max_examples=300)
@given(command=st.lists(values, min_size=1, max_size=8), env=st.dictionaries(env_names, values, max_size=6))
def test_every_script_token_round_trips_through_shlex(command: list[str], env: dict[str, str]) -> None:
    assume(command[0] != "")
    plan = _plan({**GOOD, "command": command, "env": env})
    assert _script_tokens(plan.script) == _expected_tokens(tuple(command), env, "0027")


PRINTER = "import json, os, sys\nprint(json.dumps([sys.argv[1:], dict(os.environ)]))"


def _through_bash(args: tuple[str, ...] | list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Run the worker script bash would run (``exec``-ing a printer) and return what it received."""
    plan = _plan({**GOOD, "command": [sys.executable, "-c", PRINTER, *args], "env": env})
    done = subprocess.run(["bash", "-c", plan.script], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                          capture_output=True, text=True, check=True)
    got_args, got_env = json.loads(done.stdout)
    return got_args, {k: got_env[k] for k in env if k in got_env}


@settings(max_examples=60, deadline=None)
@given(args=st.lists(values, max_size=6), env=st.dictionaries(env_names.filter(lambda n: n not in (
        "PATH", "PWD", "OLDPWD", "HOME", "IFS", "PS4", "HOSTNAME", "OSTYPE", "MACHTYPE", "HOSTTYPE", "OPTERR",
        "TERM", "PS1", "PS2", "MAILCHECK", "COLUMNS", "LINES", "HISTFILE", "LANG") and not re.match(
        "(LC_|PYTHON)", n)), values, max_size=5))
def test_bash_runs_exactly_the_requested_argv_and_env(args: list[str], env: dict[str, str]) -> None:
    assert _through_bash(args, env) == (args, env)


def test_a_spec_file_above_the_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(b"worker_id: w1\n" + b"#" * (4 * 1024 * 1024) + b"\n")
    with pytest.raises(SpecError, match=r"^spec: .* is larger than 4194304 bytes"):
        read_spec_file(path)
