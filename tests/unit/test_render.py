"""Golden tests: the renderers' output pinned token for token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth import Plan, WorkerSpec, build_plan, docker_run_argv, docker_run_line, engine_create_body
from berth._core.render import text_summary
from berth._runtimes.docker.render import berth_values

from .conftest import ALICE, FOUR_CPUS, make_config


def storms(plan: Plan) -> list[str]:
    """Storm's line for a berth.toml's plan: Storm's flags with berth's values, nothing added
    (what ``explain --storm`` prints without a storm.yaml)."""
    return docker_run_argv(plan, berth_values(plan))

SPEC = WorkerSpec(worker_id="9c3e-41ab", topology_id="wc-1-1700000000", port=6700, user="alice",
                  command=("java", "-Xmx768m", "org.apache.storm.daemon.worker.Worker"),
                  env={"LD_LIBRARY_PATH": "/opt/lib"}, cpu_percent=260, memory_mb=1024)


def test_storm_reference_example_matches_storm_token_for_token(node_paths: dict[str, Path]) -> None:
    """Storm's DockerManager command for: two groups, cpu 260, one ro mount, a seccomp file."""
    plan = build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS)
    root = "/data/storm/workers/9c3e-41ab"
    expected = [
        "run", "--name=9c3e-41ab", "--user=1001:1001", "-d", "--net=host", "--read-only",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "-v", f"{node_paths['home']}:{node_paths['home']}:ro",
        "-v", "/data/storm/supervisor:/data/storm/supervisor:ro",
        "-v", f"{root}:{root}",
        "-v", "/logs/storm/workers-artifacts/wc-1-1700000000/6700:/logs/storm/workers-artifacts/wc-1-1700000000/6700",
        "-v", "/data/storm/workers-users/9c3e-41ab:/data/storm/workers-users/9c3e-41ab",
        "-v", f"{node_paths['nscd']}:{node_paths['nscd']}",
        "-v", "/data/storm/supervisor/stormdist/wc-1-1700000000/shared_by_topology:"
              "/data/storm/supervisor/stormdist/wc-1-1700000000/shared_by_topology",
        "-v", f"{root}/tmp:/tmp",
        "-v", f"{node_paths['ro']}:{node_paths['ro']}:ro",
        "--cgroup-parent=/storm",
        "--group-add", "1001", "--group-add", "2001",
        f"--workdir={root}", f"--cidfile={root}/container.cid",
        "--cap-drop=ALL", "--security-opt", "no-new-privileges",
        "--security-opt", f"seccomp={node_paths['seccomp']}",
        "--cpus=2.6", "--memory=1024m",
        "storm/worker:2.6", "bash", f"{root}/storm-worker-script.sh",
    ]
    assert storms(plan) == expected


def test_berth_line_adds_its_flags_after_storms_and_before_the_image(node_paths: dict[str, Path]) -> None:
    plan = build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS)
    storm = storms(plan)
    berth = docker_run_argv(plan)
    extras = ["--pids-limit=1024", "--memory-swap=1024m", "--log-driver=json-file", "--log-opt", "max-size=20m",
              "--log-opt", "max-file=5", "--init", "--label=berth.worker=9c3e-41ab",
              "--label=berth.topology=wc-1-1700000000", "--label=berth.port=6700",
              "--label=berth.user=alice", "--label=berth.node=node1", "--label=berth.spec=67a27f9ff4761e1a",
              "--label=berth.owner=/var/lib/berth/state", "--label=berth.memory_mb=1024",
              "--label=berth.cpu_percent=260", "--label=berth.pids_limit=1024"]
    assert berth == storm[:-3] + extras + storm[-3:]


def test_numa_pinning_adds_cpuset_flags_after_mounts(node_paths: dict[str, Path]) -> None:
    spec = SPEC.model_copy(update={"cores": (1, 3), "numa_node": 0, "cpu_percent": 100})
    argv = storms(build_plan(spec, make_config(node_paths, readonly_mounts=()), ALICE, FOUR_CPUS))
    i = argv.index("--cgroup-parent=/storm")
    assert argv[i - 2:i] == ["--cpuset-cpus=1,3", "--cpuset-mems=0"]
    assert argv[i - 4:i - 2] == ["-v", "/data/storm/workers/9c3e-41ab/tmp:/tmp"]
    assert "--cpus=1.0" in argv


@pytest.mark.parametrize(("percent", "token"), [(100, "--cpus=1.0"), (260, "--cpus=2.6"), (50, "--cpus=0.5"),
                                                (1, "--cpus=0.01"), (333, "--cpus=3.33"), (400, "--cpus=4.0")])
def test_cpus_printed_like_java_doubles(node_paths: dict[str, Path], percent: int, token: str) -> None:
    spec = SPEC.model_copy(update={"cpu_percent": percent})
    assert token in storms(build_plan(spec, make_config(node_paths), ALICE, FOUR_CPUS))


def test_docker_line_is_shell_quoted(node_paths: dict[str, Path]) -> None:
    plan = build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS)
    line = docker_run_line(plan, berth_values(plan))
    assert line.startswith("docker run --name=9c3e-41ab ")
    # the install dir has a space: quoted as one word, not split in two
    assert f"'{node_paths['home']}:{node_paths['home']}:ro'" in line


def test_engine_body_exact(node_paths: dict[str, Path]) -> None:
    spec = SPEC.model_copy(update={"cores": (2,), "numa_node": 0, "pids_limit": 64})
    plan = build_plan(spec, make_config(node_paths), ALICE, FOUR_CPUS)
    body = engine_create_body(plan, seccomp_json='{"defaultAction": "SCMP_ACT_ALLOW"}')
    root = "/data/storm/workers/9c3e-41ab"
    assert body["Image"] == "storm/worker:2.6"
    assert body["User"] == "1001:1001"
    assert body["Cmd"] == ["bash", f"{root}/storm-worker-script.sh"]
    assert body["WorkingDir"] == root
    assert body["Labels"] == {"berth.worker": "9c3e-41ab", "berth.topology": "wc-1-1700000000",
                              "berth.port": "6700", "berth.user": "alice", "berth.node": "node1",
                              "berth.spec": "189940b37dd47bdd", "berth.owner": "/var/lib/berth/state",
                              "berth.memory_mb": "1024", "berth.cpu_percent": "260", "berth.pids_limit": "64"}
    host = body["HostConfig"]
    assert host == {
        "NetworkMode": "host",
        "ReadonlyRootfs": True,
        "Mounts": host["Mounts"],
        "CgroupParent": "/storm",
        "GroupAdd": ["1001", "2001"],
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges", 'seccomp={"defaultAction": "SCMP_ACT_ALLOW"}'],
        "NanoCpus": 2_600_000_000,
        "Memory": 1024 * 1024 * 1024,
        "MemorySwap": 1024 * 1024 * 1024,
        "PidsLimit": 64,
        "Privileged": False,
        "Init": True,
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "20m", "max-file": "5"}},
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
        "CpusetCpus": "2",
        "CpusetMems": "0",
    }
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]] == [
        ("/sys/fs/cgroup", "/sys/fs/cgroup", True),
        (str(node_paths["home"]), str(node_paths["home"]), True),
        ("/data/storm/supervisor", "/data/storm/supervisor", True),
        (root, root, False),
        ("/logs/storm/workers-artifacts/wc-1-1700000000/6700", "/logs/storm/workers-artifacts/wc-1-1700000000/6700",
         False),
        ("/data/storm/workers-users/9c3e-41ab", "/data/storm/workers-users/9c3e-41ab", False),
        (str(node_paths["nscd"]), str(node_paths["nscd"]), False),
        ("/data/storm/supervisor/stormdist/wc-1-1700000000/shared_by_topology",
         "/data/storm/supervisor/stormdist/wc-1-1700000000/shared_by_topology", False),
        (f"{root}/tmp", "/tmp", False),
        (str(node_paths["ro"]), str(node_paths["ro"]), True),
    ]
    assert all(m["Type"] == "bind" for m in host["Mounts"])
    json.dumps(body)  # serialisable as sent


def test_engine_body_without_seccomp_uses_engine_default(node_paths: dict[str, Path]) -> None:
    plan = build_plan(SPEC, make_config(node_paths, seccomp_profile=""), ALICE, FOUR_CPUS)
    assert engine_create_body(plan)["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert "CpusetCpus" not in engine_create_body(plan)["HostConfig"]


def test_engine_body_refuses_to_drop_a_configured_seccomp_profile(node_paths: dict[str, Path]) -> None:
    plan = build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS)
    with pytest.raises(ValueError, match="seccomp"):
        engine_create_body(plan)


def test_text_summary_names_limits_mounts_and_security(node_paths: dict[str, Path]) -> None:
    text = text_summary(build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS))
    assert "cpu       260% (2.6 cpus)" in text
    assert "memory    1024 MiB, no swap beyond it" in text
    assert "rw  /tmp" in text and "<- /data/storm/workers/9c3e-41ab/tmp" in text
    assert "caps      drop ALL" in text
    assert f"seccomp   {node_paths['seccomp']}" in text


def test_oci_config_matches_the_plan(node_paths: dict[str, Path]) -> None:
    from berth._runtimes.runc.oci import oci_config

    spec = SPEC.model_copy(update={"cores": (1,), "numa_node": 0})
    plan = build_plan(spec, make_config(node_paths), ALICE, FOUR_CPUS)
    cfg = oci_config(plan, "/rootfs/python")
    proc = cfg["process"]
    assert proc["user"] == {"uid": 1001, "gid": 1001, "additionalGids": [1001, 2001]}
    assert proc["args"] == ["bash", "/data/storm/workers/9c3e-41ab/storm-worker-script.sh"]
    assert proc["cwd"] == "/data/storm/workers/9c3e-41ab"
    assert proc["noNewPrivileges"] is True
    assert all(v == [] for v in proc["capabilities"].values())
    assert cfg["root"] == {"path": "/rootfs/python", "readonly": True}
    assert cfg["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 1024 * 2**20, "swap": 1024 * 2**20},
        "cpu": {"quota": 260_000, "period": 100_000, "cpus": "1", "mems": "0"},
        "pids": {"limit": 1024},
    }
    assert cfg["linux"]["cgroupsPath"] == "/storm/9c3e-41ab"
    assert {"type": "network"} not in cfg["linux"]["namespaces"]  # network host, as configured
    binds = [(m["source"], m["destination"], m["options"][-1]) for m in cfg["mounts"] if m["type"] == "bind"]
    planned = [(m.source, m.target, "ro" if m.read_only else "rw") for m in plan.mounts]
    assert sorted(binds) == sorted(planned)  # the same binds, parent-first (test_oci pins the order)
    assert binds.index(planned[8]) < binds.index(planned[3])  # the worker's /tmp before its worker dir


def test_the_engine_body_reads_the_profile_with_the_same_bound_and_errors_as_runc(node_paths: dict[str, Path]) -> None:
    """One reader of a seccomp profile: at most MAX_PROFILE_BYTES, a ConfigError naming the key."""
    from berth import ConfigError
    from berth._runtimes.docker.render import read_seccomp
    from berth._runtimes.seccomp import MAX_PROFILE_BYTES

    plan = build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS)
    assert read_seccomp(plan) == '{"defaultAction": "SCMP_ACT_ALLOW"}'
    node_paths["seccomp"].write_text(" " * (MAX_PROFILE_BYTES + 1))
    with pytest.raises(ConfigError, match=r"^container\.seccomp_profile: .* is larger than 4194304 bytes"):
        read_seccomp(plan)
    node_paths["seccomp"].unlink()  # gone between the plan and the launch
    with pytest.raises(ConfigError, match=r"^container\.seccomp_profile: cannot read the seccomp profile"):
        read_seccomp(plan)
