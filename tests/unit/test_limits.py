"""Node maxima on what one request can make a node spend: memory, pids, argv and env (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth import BerthError, ConfigError, HostFacts, PolicyError, SpecError, build_plan, spec_from_mapping
from berth._core.config import config_from_mapping
from berth._core.limits import ARG_MAX_DEFAULT, MAX_ARG_STRLEN, MAX_SCRIPT_BYTES, max_memory_mb, max_pids

from .conftest import ALICE

HOST = HostFacts(cpus=frozenset({0, 1, 2, 3}), mems=frozenset({0}), memory_mb=16384, pid_max=32768,
                 arg_max=2 * 1024 * 1024)
SPEC: dict[str, Any] = {"worker_id": "w1", "topology_id": "t1", "port": 6700, "user": "alice",
                        "command": ["python3", "-m", "worker"]}


def _config(**container: Any) -> Any:
    return config_from_mapping({"node": {"name": "n1", "local_dir": "/data/storm", "log_dir": "/logs/storm"},
                                "images": {"default": "storm/worker:2.6"},
                                "container": {"mount_cgroup_root": False, **container}})


def _plan(host: HostFacts = HOST, config: Any = None, **spec: Any) -> Any:
    return build_plan(spec_from_mapping({**SPEC, **spec}), config or _config(), ALICE, host)


def _refused(kind: type[BerthError], field: str, **kw: Any) -> str:
    with pytest.raises(BerthError) as info:
        _plan(**kw)
    assert type(info.value) is kind and info.value.field == field, repr(info.value)
    return info.value.reason


# -- memory --------------------------------------------------------------------------------------

def test_default_memory_maximum_is_the_hosts_ram_less_a_reserve() -> None:
    assert max_memory_mb(_config(), HOST) == 16384 - 1638  # a tenth kept for the node
    small = HostFacts(cpus=HOST.cpus, mems=HOST.mems, memory_mb=4096)
    assert max_memory_mb(_config(), small) == 4096 - 1024  # at least 1 GiB kept
    assert max_memory_mb(_config(max_memory_mb=2048), HOST) == 2048


def test_memory_above_the_node_maximum_is_refused() -> None:
    assert _plan(memory_mb=16384 - 1638).resources.memory_mb == 14746
    reason = _refused(PolicyError, "memory_mb", memory_mb=100_000_000)
    assert reason == "100000000 MiB is above the node's maximum of 14746 MiB per worker (container.max_memory_mb)"
    _refused(PolicyError, "memory_mb", memory_mb=4097, config=_config(max_memory_mb=4096))


def test_a_node_default_above_the_maximum_names_the_config_key() -> None:
    tiny = HostFacts(cpus=HOST.cpus, mems=HOST.mems, memory_mb=1536)
    reason = _refused(ConfigError, "container.memory_mb", host=tiny)
    assert "above the node's maximum of 512 MiB" in reason


def test_a_configured_maximum_above_the_hosts_ram_is_refused() -> None:
    reason = _refused(ConfigError, "container.max_memory_mb", config=_config(max_memory_mb=20000))
    assert reason == "20000 MiB is more than this host's 16384 MiB of RAM"
    with pytest.raises(ConfigError) as info:
        _config(max_memory_mb=512)  # below the default memory_mb (1024)
    assert info.value.field == "container"


# -- pids ----------------------------------------------------------------------------------------

def test_default_pids_maximum_is_well_below_pid_max() -> None:
    assert max_pids(_config(), HOST) == 4096  # pid_max / 8
    big = HostFacts(cpus=HOST.cpus, mems=HOST.mems, pid_max=4194304)
    assert max_pids(_config(), big) == 32768
    assert max_pids(_config(max_pids_limit=2000), HOST) == 2000


def test_pids_above_the_maximum_are_refused() -> None:
    assert _plan(pids_limit=4096).resources.pids_limit == 4096
    assert _refused(PolicyError, "pids_limit", pids_limit=4097) == \
        "4097 is above the node's maximum of 4096 per worker (container.max_pids_limit)"
    _refused(PolicyError, "pids_limit", pids_limit=32768)


def test_a_configured_pids_maximum_at_or_above_pid_max_is_refused() -> None:
    reason = _refused(ConfigError, "container.max_pids_limit", config=_config(max_pids_limit=32768))
    assert reason == "32768 is not below this host's kernel.pid_max (32768)"


# -- argv, env and the worker script --------------------------------------------------------------

def test_one_argument_longer_than_the_kernel_takes_is_refused() -> None:
    ok = "x" * (MAX_ARG_STRLEN - 1)
    assert _plan(command=["python3", ok]).command[1] == ok
    with pytest.raises(SpecError) as info:
        spec_from_mapping({**SPEC, "command": ["python3", ok + "x"]})
    assert (info.value.field, info.value.reason) == (
        "command", f"argument 1 is {MAX_ARG_STRLEN} bytes; the kernel takes at most {MAX_ARG_STRLEN - 1}")
    with pytest.raises(SpecError) as info:
        spec_from_mapping({**SPEC, "env": {"BIG": "y" * MAX_ARG_STRLEN}})
    assert info.value.field == "env" and "BIG" in info.value.reason


def test_argv_and_env_above_arg_max_are_refused() -> None:
    chunk = "x" * 100_000
    reason = _refused(PolicyError, "command", command=["python3", *[chunk] * 25])
    assert "above what exec takes on this node" in reason and "ARG_MAX" in reason
    env = {f"V{i}": chunk for i in range(25)}
    _refused(PolicyError, "env", env=env)


def test_the_kernels_arg_max_is_used_when_it_is_smaller() -> None:
    small = HostFacts(cpus=HOST.cpus, mems=HOST.mems, arg_max=262144)
    _refused(PolicyError, "command", host=small, command=["python3", *["x" * 100_000] * 3])
    assert ARG_MAX_DEFAULT == 2 * 1024 * 1024


def test_a_script_that_quoting_would_blow_up_is_refused() -> None:
    quotes = "'" * 100_000  # each quote is five bytes in the script
    reason = _refused(PolicyError, "command", command=["python3", *[quotes] * 10])
    assert reason.startswith("the worker script would be ") and f"above {MAX_SCRIPT_BYTES}" in reason


# -- host facts ----------------------------------------------------------------------------------

def test_host_facts_are_read_from_proc(tmp_path: Path) -> None:
    (tmp_path / "sys/cpu").mkdir(parents=True)
    (tmp_path / "sys/node").mkdir(parents=True)
    (tmp_path / "sys/cpu/online").write_text("0-1\n")
    (tmp_path / "sys/node/online").write_text("0\n")
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemTotal:       24683924 kB\nMemFree:  1 kB\n")
    (tmp_path / "proc/sys/kernel/pid_max").write_text("32768\n")
    facts = HostFacts.probe(str(tmp_path / "sys"), proc=str(tmp_path / "proc"))
    assert (facts.cpus, facts.memory_mb, facts.pid_max) == (frozenset({0, 1}), 24105, 32768)
    assert facts.arg_max is not None and facts.arg_max >= 131072
