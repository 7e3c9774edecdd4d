"""The OCI renderer and the Docker-format seccomp conversion, pinned to exact values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from berth import ConfigError, Plan, WorkerSpec, build_plan
from berth._core.labels import LABEL_IMAGE
from berth._linux.mountinfo import parse_mountinfo
from berth._runtimes.runc.oci import oci_config, oci_mounts
from berth._runtimes.seccomp import load_oci_seccomp, oci_seccomp

from .conftest import ALICE, FOUR_CPUS, make_config

SPEC = WorkerSpec(worker_id="w1", topology_id="topo", port=6700, user="alice", command=("true",))

PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["breakpoint"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["new_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.8"}},
        {"names": ["old_only"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.8"}},
        {"names": ["not_on_amd64"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
    ],
}


def _names(oci: dict[str, object]) -> list[tuple[str, str]]:
    return [(s["names"][0], s["action"]) for s in oci["syscalls"]]  # type: ignore[attr-defined]


def test_docker_profile_is_resolved_as_the_engine_does_for_a_worker_without_capabilities() -> None:
    oci = oci_seccomp(PROFILE, arch="amd64", kernel_release="6.1.0-13-amd64")
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO" and oci["defaultErrnoRet"] == 38
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert _names(oci) == [("read", "SCMP_ACT_ALLOW"), ("personality", "SCMP_ACT_ALLOW"),
                           ("arch_prctl", "SCMP_ACT_ALLOW"), ("bpf", "SCMP_ACT_ERRNO"),
                           ("new_call", "SCMP_ACT_ALLOW")]
    assert oci["syscalls"][0] == {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}
    assert oci["syscalls"][1]["args"] == [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]
    assert oci["syscalls"][3]["errnoRet"] == 1


def test_other_arch_old_kernel_and_capabilities_pick_other_rules() -> None:
    oci = oci_seccomp(PROFILE, arch="arm64", kernel_release="5.4.0", caps=["CAP_SYS_ADMIN"])
    assert oci["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert _names(oci) == [("read", "SCMP_ACT_ALLOW"), ("personality", "SCMP_ACT_ALLOW"),
                           ("breakpoint", "SCMP_ACT_ALLOW"), ("bpf", "SCMP_ACT_ALLOW"),
                           ("old_only", "SCMP_ACT_ALLOW"), ("not_on_amd64", "SCMP_ACT_ALLOW")]


@pytest.mark.parametrize("bad, reason", [
    ({"syscalls": []}, "no defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "archMap": [{}]},
     "both 'architectures' and 'archMap'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}, "syscalls[0]: no syscall names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]}, "syscalls[0]: no action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "A", "args": [{"index": 0}]}]},
     "syscalls[0]: an argument lacks value, op"),
])
def test_a_bad_profile_is_an_error_naming_the_rule(bad: dict[str, object], reason: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        oci_seccomp(bad, arch="amd64", kernel_release="6.1")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as err:
        load_oci_seccomp(str(path), "container.seccomp_profile", arch="amd64", kernel_release="6.1")
    assert err.value.field == "container.seccomp_profile" and reason in err.value.reason


def test_an_unreadable_or_huge_profile_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_oci_seccomp(str(tmp_path / "missing.json"), "runc.default_seccomp")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (4 * 1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_oci_seccomp(str(big), "runc.default_seccomp")


def test_oci_config_carries_identity_limits_hardening_and_annotations(node_paths: dict[str, Path]) -> None:
    spec = SPEC.model_copy(update={"cores": (1, 2), "numa_node": 0, "cpu_percent": 150, "memory_mb": 64,
                                   "pids_limit": 99})
    plan = build_plan(spec, make_config(node_paths), ALICE, FOUR_CPUS)
    seccomp = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    cfg = oci_config(plan, "/b/rootfs", seccomp=seccomp)
    assert cfg["process"]["user"] == {"uid": 1001, "gid": 1001, "additionalGids": [1001, 2001]}
    assert cfg["process"]["terminal"] is False and cfg["process"]["noNewPrivileges"] is True
    assert cfg["process"]["capabilities"] == {k: [] for k in ("bounding", "effective", "inheritable", "permitted",
                                                               "ambient")}
    assert cfg["root"] == {"path": "/b/rootfs", "readonly": True}
    assert cfg["linux"]["seccomp"] == seccomp
    assert cfg["linux"]["resources"]["cpu"] == {"quota": 150_000, "period": 100_000, "cpus": "1,2", "mems": "0"}
    assert cfg["linux"]["resources"]["memory"] == {"limit": 64 * 2**20, "swap": 64 * 2**20}
    assert cfg["linux"]["resources"]["pids"] == {"limit": 99}
    assert cfg["linux"]["cgroupsPath"] == "/storm/w1"
    assert [n["type"] for n in cfg["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount"]
    assert cfg["annotations"] == {**plan.label_map, LABEL_IMAGE: "storm/worker:2.6"}
    assert "/proc/kcore" in cfg["linux"]["maskedPaths"] and "/proc/sys" in cfg["linux"]["readonlyPaths"]
    assert cfg["process"]["args"] == ["bash", "/data/storm/workers/w1/storm-worker-script.sh"]  # no init


def test_a_network_other_than_host_gets_its_own_namespace(node_paths: dict[str, Path]) -> None:
    plan = build_plan(SPEC, make_config(node_paths, network="none"), ALICE, FOUR_CPUS)
    assert {"type": "network"} in oci_config(plan, "/r")["linux"]["namespaces"]


MOUNTINFO = """\
21 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 21 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
"""


def test_read_only_binds_are_read_only_in_their_submounts_and_go_parent_first(node_paths: dict[str, Path]) -> None:
    """Sorted by depth, as the engine does, and stably: Storm's order among mounts of one depth."""
    plan = build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS)
    mounts = oci_mounts(plan, parse_mountinfo(MOUNTINFO))
    depth = [os.path.normpath(m["destination"]).count("/") for m in mounts]
    assert depth == sorted(depth)
    assert [m["destination"] for m in mounts[:4]] == ["/proc", "/dev", "/sys", "/tmp"]
    assert [m["destination"] for m in mounts if m["type"] != "bind"][3:] == ["/dev/pts", "/dev/shm", "/dev/mqueue"]
    binds = {m["destination"]: (m["options"][0], m["options"][-1]) for m in mounts if m["type"] == "bind"}
    assert [binds[d] for d in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids")] == [
        ("bind", "ro")] * 3  # the cgroup root is not recursive: each submount is read-only of its own
    assert [binds[m.target] for m in plan.mounts[1:]] == [("rbind", "ro" if m.read_only else "rw")
                                                           for m in plan.mounts[1:]]
    for d in sorted(set(depth)):
        same = [m["destination"] for m, k in zip(mounts, depth, strict=True) if k == d]
        planned = [m.target for m in plan.mounts if m.target in same]
        assert [t for t in same if t in planned] == planned  # Storm's order where the depth is equal


def test_explain_storm_keeps_storms_mount_order_while_the_oci_config_goes_parent_first(
        node_paths: dict[str, Path]) -> None:
    from berth import docker_run_argv
    from berth._runtimes.docker.render import berth_values

    def storms(p: Plan) -> list[str]:
        return docker_run_argv(p, berth_values(p))

    plan = build_plan(SPEC, make_config(node_paths), ALICE, FOUR_CPUS)
    storm = storms(plan)
    volumes = [storm[i + 1].split(":")[1] for i, t in enumerate(storm) if t == "-v"]
    assert volumes == [m.target for m in plan.mounts] and volumes[8] == "/tmp"  # Storm's ninth mount
    oci = [m["destination"] for m in oci_config(plan, "/r")["mounts"]]
    assert oci.index("/tmp") < oci.index("/data/storm/workers/w1")


def test_hardened_refuses_what_the_engines_default_refuses_a_worker_without_capabilities_and_io_uring() -> None:
    from berth._runtimes.seccomp import hardened

    allow_all = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "clone", "clone3", "unshare", "keyctl", "io_uring_setup"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["setns"], "action": "SCMP_ACT_ALLOW"}, {"names": ["io_uring_enter"], "action": "SCMP_ACT_ALLOW"}]}
    out = hardened(allow_all, arch="amd64")
    rules = out["syscalls"]
    assert rules[0] == {"names": ["read"], "action": "SCMP_ACT_ALLOW"}  # the rest of the rule stays
    assert rules[1] == {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
    flags = [r["args"][0]["value"] for r in rules[2:9]]
    assert sorted(flags) == sorted([0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000])
    assert all(r["action"] == "SCMP_ACT_ERRNO" and r["errnoRet"] == 1 for r in rules[2:9])
    assert rules[9] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    assert rules[10] == {"names": ["unshare", "setns", "keyctl", "add_key", "request_key"],
                         "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    assert rules[11] == {"names": ["io_uring_setup", "io_uring_enter", "io_uring_register"],
                         "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    assert len(rules) == 12  # the setns-only and io_uring-only allow rules are gone
    assert hardened(allow_all, arch="s390x")["syscalls"][1]["args"][0]["index"] == 1


def test_filters_convert_once_per_file_version_and_give_the_engine_the_same_filter_as_runc(tmp_path: Path) -> None:
    from berth._runtimes.seccomp import Filters, hardened

    default, mine = tmp_path / "default.json", tmp_path / "mine.json"
    default.write_text(json.dumps(PROFILE))
    mine.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    filters = Filters(str(default))
    runc = filters.oci(None)
    assert runc == hardened(oci_seccomp(PROFILE, compat_arches=False))
    assert json.loads(filters.default_json()) == runc  # the docker runtime sends this same filter
    assert filters.oci(None) is runc  # not converted again
    assert filters.oci(str(mine)) == {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}  # the operator's: as is
    os.utime(default, (1, 1))
    assert filters.oci(None) is not runc and filters.oci(None) == runc
    with pytest.raises(ConfigError, match=r"runc.default_seccomp = .*missing.json: No such file.*containers-common"):
        Filters(str(tmp_path / "missing.json")).default_json()


def test_without_compat_arches_only_the_native_architecture_is_filtered() -> None:
    oci = oci_seccomp(PROFILE, arch="amd64", kernel_release="6.1", compat_arches=False)
    assert oci["architectures"] == ["SCMP_ARCH_X86_64"]
