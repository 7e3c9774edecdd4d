"""The audit's reading of the kernel's files, on made-up /proc and cgroup trees (v1 and v2).

The integration tests audit real workers on this machine's cgroup version; these cover the
other one, and each way a mount table can be wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from berth import Plan, build_plan, spec_from_mapping
from berth._core.config import config_from_mapping
from berth._linux.mountinfo import parse_mountinfo, reachable, read_only_all_the_way_down
from berth._node.audit import (
    NO_CAPS,
    audit_processes,
    cgroup_checks,
    mount_checks,
    namespace_checks,
    process_checks,
    spec_from_request,
)
from berth._runtimes.docker.runtime import request_from_inspect

from .conftest import ALICE, FOUR_CPUS

CONFIG = config_from_mapping({
    "node": {"name": "n1", "local_dir": "/data/storm/local", "log_dir": "/data/storm/log"},
    "images": {"default": "storm/worker:2.6"},
    "container": {"mount_cgroup_root": False, "cgroup_parent": "/berth"},
})
PLAN: Plan = build_plan(spec_from_mapping({
    "worker_id": "w1", "topology_id": "t1", "port": 6700, "user": "alice", "command": ["x"],
    "cpu_percent": 50, "memory_mb": 64, "pids_limit": 77, "cores": [1], "numa_node": 0}), CONFIG, ALICE, FOUR_CPUS)
MIB64 = str(64 * 2**20)

# The host: /data is a bind of /exports of a second disk, so a planned source's filesystem path
# is not its host path (the case a naive path comparison gets wrong).
HOST = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw
24 23 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
30 22 254:1 /exports /data rw,relatime - ext4 /dev/vdb rw
"""


def _container_table(*, root: str = "ro", override: dict[str, str] | None = None, extra: str = "") -> str:
    """A worker's mountinfo as the engine makes it for PLAN; ``override`` maps a target to its line."""
    lines = [
        f"100 90 0:50 / / {root},relatime - overlay overlay rw",
        "101 100 0:51 / /proc rw,nosuid,nodev,noexec - proc proc rw",
        "102 100 0:52 / /dev rw,nosuid - tmpfs tmpfs rw,mode=755",
        "103 102 0:53 / /dev/pts rw,nosuid,noexec - devpts devpts rw",
        "104 100 0:54 / /sys ro,nosuid,nodev,noexec - sysfs sysfs rw",
        "105 102 0:55 / /dev/mqueue rw,nosuid,nodev,noexec - mqueue mqueue rw",
        "106 102 0:56 / /dev/shm rw,nosuid,nodev,noexec - tmpfs shm rw",
        "107 100 254:0 /var/lib/docker/containers/c/hosts /etc/hosts ro,relatime - ext4 /dev/vda rw",
        "108 101 0:52 /null /proc/keys rw,nosuid - tmpfs tmpfs rw",
    ]
    n = 120
    for m in PLAN.mounts:
        n += 1
        line = (override or {}).get(m.target) or (
            f"{n} 100 254:1 /exports{m.source.removeprefix('/data')} {m.target.replace(' ', chr(92) + '040')} "
            f"{'ro' if m.read_only else 'rw'},relatime - ext4 /dev/vdb rw")
        lines.append(line)
    return "\n".join(lines) + "\n" + extra


def _mounts(text: str) -> dict[str, Any]:
    return {c.name: c for c in mount_checks(parse_mountinfo(text), parse_mountinfo(HOST), PLAN)}


def test_a_worker_mounted_as_planned_passes_every_mount_check() -> None:
    checks = _mounts(_container_table())
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert set(checks) == {"rootfs.read_only", "mounts.no_other_writable"} | {f"mount {m.target}" for m in PLAN.mounts}
    assert checks["mount /tmp"].observed == f"rw {PLAN.layout.worker_tmp}"  # mapped back to the host path


def test_a_writable_root_fails() -> None:
    checks = _mounts(_container_table(root="rw"))
    assert not checks["rootfs.read_only"].ok and checks["rootfs.read_only"].observed == "rw (overlay)"


def test_a_mount_from_another_source_fails_and_names_it() -> None:
    other = PLAN.layout.worker_tmp.replace("/w1/", "/w2/")
    line = f"150 100 254:1 /exports{other.removeprefix('/data')} /tmp rw,relatime - ext4 /dev/vdb rw"
    checks = _mounts(_container_table(override={"/tmp": line}))
    assert not checks["mount /tmp"].ok and checks["mount /tmp"].observed == f"rw {other}"


def test_the_same_path_on_another_device_is_another_source() -> None:
    src = PLAN.layout.worker_tmp
    line = f"150 100 254:7 /exports{src.removeprefix('/data')} /tmp rw,relatime - ext4 /dev/vdz rw"
    assert not _mounts(_container_table(override={"/tmp": line}))["mount /tmp"].ok


def test_a_read_only_mount_made_writable_fails() -> None:
    sup = PLAN.layout.supervisor_dir
    line = f"150 100 254:1 /exports{sup.removeprefix('/data')} {sup} rw,relatime - ext4 /dev/vdb rw"
    checks = _mounts(_container_table(override={sup: line}))
    assert not checks[f"mount {sup}"].ok and checks[f"mount {sup}"].observed.startswith("rw ")
    assert not checks["mounts.no_other_writable"].ok and sup in checks["mounts.no_other_writable"].observed


def test_a_missing_mount_fails() -> None:
    checks = _mounts(_container_table(override={"/tmp": "150 100 0:99 / /elsewhere ro - tmpfs tmpfs ro"}))
    assert checks["mount /tmp"].observed == "not mounted" and not checks["mount /tmp"].ok


@pytest.mark.parametrize(("extra", "words"), [
    ("200 100 254:0 / /host rw,relatime - ext4 /dev/vda rw\n", "/host ext4"),
    ("200 104 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs rw\n201 200 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup "
     "rw,memory\n", "/sys/fs/cgroup/memory cgroup (writable cgroupfs)"),
    ("200 100 0:54 / /sys rw - sysfs sysfs rw\n", "/sys sysfs (writable sysfs)"),
    ("200 100 0:57 / /run/docker.sock rw - ext4 /dev/vda rw\n", "/run/docker.sock"),
])
def test_any_other_writable_mount_fails(extra: str, words: str) -> None:
    check = _mounts(_container_table(extra=extra))["mounts.no_other_writable"]
    assert not check.ok and words in check.observed


def test_a_writable_mount_covered_by_a_read_only_one_is_out_of_reach() -> None:
    extra = ("200 104 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs rw\n"
             "201 200 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
             "202 201 0:29 / /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n")
    table = parse_mountinfo(_container_table(extra=extra))
    assert 201 not in {m.mount_id for m in reachable(table)} and 202 in {m.mount_id for m in reachable(table)}
    assert _mounts(_container_table(extra=extra))["mounts.no_other_writable"].ok


def test_mountinfo_escapes_are_undone() -> None:
    [m] = parse_mountinfo("36 35 98:0 /my\\040dir /mnt/a\\134b ro,nosuid master:1 - ext3 /dev/root rw\n")
    assert (m.root, m.mount_point, m.read_only, m.fstype) == ("/my dir", "/mnt/a\\b", True, "ext3")


def test_read_only_binds_become_read_only_all_the_way_down() -> None:
    table = parse_mountinfo(HOST + "31 30 254:2 / /data/storm/local/supervisor/cache rw - ext4 /dev/vdc rw\n")
    mounts = [
        {"Type": "bind", "Source": "/sys/fs/cgroup", "Target": "/sys/fs/cgroup", "ReadOnly": True,
         "BindOptions": {"Propagation": "rprivate"}},
        {"Type": "bind", "Source": "/data", "Target": "/data", "ReadOnly": True, "BindOptions": {}},
        {"Type": "bind", "Source": "/data/storm/local/supervisor", "Target": "/data/storm/local/supervisor",
         "ReadOnly": False, "BindOptions": {}},
        {"Type": "bind", "Source": "/data/x", "Target": "/x", "ReadOnly": False},
    ]
    out = read_only_all_the_way_down(mounts, table)
    assert out[0]["BindOptions"] == {"Propagation": "rprivate", "NonRecursive": True}
    assert out[1] == {"Type": "bind", "Source": "/sys/fs/cgroup/memory", "Target": "/sys/fs/cgroup/memory",
                      "ReadOnly": True, "BindOptions": {"Propagation": "rprivate", "NonRecursive": True}}
    # /data's submount lies under another planned mount, which decides for it
    assert out[2]["BindOptions"] == {"NonRecursive": True} and out[3] is mounts[2] and out[4] is mounts[3]
    assert len(out) == 5


# -- cgroup limits, v1 and v2 ------------------------------------------------------------------------

V1 = {"memory.limit_in_bytes": MIB64, "memory.memsw.limit_in_bytes": MIB64, "cpu.cfs_quota_us": "50000",
      "cpu.cfs_period_us": "100000", "cpuset.effective_cpus": "1", "cpuset.effective_mems": "0", "pids.max": "77"}
V2 = {"memory.max": MIB64, "memory.swap.max": "0", "cpu.max": "50000 100000", "cpuset.cpus.effective": "1",
      "cpuset.mems.effective": "0", "pids.max": "77"}


def _cgroup(tmp_path: Path, version: int, **changes: str) -> dict[str, Any]:
    files = {**(V1 if version == 1 else V2), **{k.replace("__", "."): v for k, v in changes.items()}}
    for name, value in files.items():
        if value is not None:
            (tmp_path / name).write_text(value + "\n")
    checks = cgroup_checks(1234, PLAN, FOUR_CPUS, locate=lambda pid, ctrl: (str(tmp_path), version))
    return {c.name: c for c in checks}


@pytest.mark.parametrize("version", [1, 2])
def test_limits_as_planned_pass(tmp_path: Path, version: int) -> None:
    checks = _cgroup(tmp_path, version)
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert set(checks) == {"memory.limit", "memory.swap", "cpu.quota", "cpuset.cpus", "cpuset.mems", "pids.limit"}


BROKEN = [
    (1, {"memory__limit_in_bytes": "9223372036854771712"}, "memory.limit", "unlimited"),
    (1, {"memory__memsw__limit_in_bytes": "9223372036854771712"}, "memory.swap", "unlimited"),
    (1, {"cpu__cfs_quota_us": "-1"}, "cpu.quota", "unlimited"),
    (1, {"cpu__cfs_quota_us": "100000"}, "cpu.quota", "100%"),
    (1, {"cpuset__effective_cpus": "0-3"}, "cpuset.cpus", "0,1,2,3"),
    (1, {"pids__max": "max"}, "pids.limit", "max"),
    (2, {"memory__max": "max"}, "memory.limit", "unlimited"),
    (2, {"memory__swap__max": "max"}, "memory.swap", "unlimited"),
    (2, {"cpu__max": "max 100000"}, "cpu.quota", "unlimited"),
    (2, {"cpu__max": "25000 50000"}, "cpu.quota", "50%"),  # the same share over another period: fine
    (2, {"cpuset__mems__effective": "0-1"}, "cpuset.mems", "0,1"),
    (2, {"pids__max": "1000"}, "pids.limit", "1000"),
]


@pytest.mark.parametrize(("version", "change", "name", "observed"), BROKEN)
def test_a_limit_other_than_planned_fails(tmp_path: Path, version: int, change: dict[str, str], name: str,
                                          observed: str) -> None:
    check = _cgroup(tmp_path, version, **change)[name]
    assert observed in check.observed
    assert check.ok is (change == {"cpu__max": "25000 50000"})


def test_an_unreadable_limit_fails_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    checks = cgroup_checks(1, PLAN, FOUR_CPUS, locate=lambda pid, ctrl: (str(tmp_path / "x"), 2))
    assert not checks[0].ok and checks[0].observed.startswith("cannot read")
    assert checks[1].ok  # no swap file: the kernel does not account swap, nothing to limit


# -- processes and namespaces -------------------------------------------------------------------------

def _status(uid: int = 2101, cap: str = NO_CAPS, nnp: str = "1", seccomp: str = "2",
            groups: str = "1001 2001") -> dict[str, str]:
    return {"CapEff": cap, "CapPrm": cap, "CapBnd": cap, "CapAmb": NO_CAPS, "NoNewPrivs": nnp, "Seccomp": seccomp,
            "Uid": f"{uid}\t{uid}\t{uid}\t{uid}", "Gid": "1001\t1001\t1001\t1001", "Groups": groups}


def test_every_process_is_checked_and_an_offender_is_named() -> None:
    good = _status(uid=1001)
    checks = {c.name: c for c in process_checks({10: good, 11: good}, PLAN, PLAN.security, 1000)}
    assert all(c.ok for c in checks.values()) and "(all 2 processes)" in checks["uid"].observed
    bad = _status(uid=0, cap="000001ffffffffff", nnp="0", seccomp="0", groups="0")
    checks = {c.name: c for c in process_checks({10: good, 11: bad}, PLAN, PLAN.security, 1000)}
    assert {n for n, c in checks.items() if not c.ok} == {"caps.effective", "caps.permitted", "caps.bounding",
                                                          "no_new_privs", "seccomp", "uid", "groups"}
    assert checks["uid"].observed == "pid 11: 0 0 0 0" and checks["seccomp"].observed == "pid 11: 0 (disabled)"


def test_without_a_plan_the_uid_must_still_not_be_root() -> None:
    checks = {c.name: c for c in process_checks({5: _status(uid=0)}, None, PLAN.security, 1000)}
    assert not checks["uid"].ok and "gid" not in checks and "groups" not in checks
    assert {c.name: c for c in process_checks({5: _status(uid=1500)}, None, PLAN.security, 1000)}["uid"].ok


def _proc(tmp_path: Path, pid: int, cgroup: str, status: dict[str, str] | None = None) -> Path:
    d = tmp_path / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "ns" / "net").write_text("")
    (d / "cgroup").write_text(cgroup)
    (d / "status").write_text("".join(f"{k}:\t{v}\n" for k, v in (status or _status(uid=1001)).items()))
    (d / "mountinfo").write_text(_container_table())
    return d


def test_network_and_cgroup_parent_v1_and_v2(tmp_path: Path) -> None:
    v1 = _proc(tmp_path, 7, "4:memory:/berth/abc\n1:cpu:/berth/abc\n0::/berth/abc\n")
    mine = os.stat(v1 / "ns" / "net").st_ino
    checks = {c.name: c for c in namespace_checks(7, PLAN.security, str(tmp_path), (mine, "test"))}
    assert checks["network"].ok and checks["cgroup.parent"].ok
    _proc(tmp_path, 8, "0::/system.slice/docker-abc.scope\n")
    checks = {c.name: c for c in namespace_checks(8, PLAN.security, str(tmp_path), (mine, "test"))}
    assert not checks["network"].ok  # another namespace than the host's, though the plan says host
    assert not checks["cgroup.parent"].ok and checks["cgroup.parent"].observed == "/system.slice/docker-abc.scope"


def test_audit_processes_reads_a_whole_worker_and_skips_processes_that_ended(tmp_path: Path) -> None:
    d = _proc(tmp_path, 9, "0::/berth/abc\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    for name, value in V2.items():
        (cg / name).write_text(value)
    checks = audit_processes([9, 4242], PLAN, PLAN.security, FOUR_CPUS, 1000, proc=str(tmp_path),
                             locate=lambda pid, ctrl: (str(cg), 2), host_mounts=parse_mountinfo(HOST),
                             host_ns=(os.stat(d / "ns" / "net").st_ino, "test"))
    assert [c for c in checks if not c.ok] == []
    assert checks[0].observed == "1 process(es), main pid 9"  # 4242 ended before it was read


def test_the_request_a_container_stands_for() -> None:
    data = {"Config": {"Image": "storm/py:3", "Labels": {"berth.worker": "w1", "berth.topology": "t1",
                                                         "berth.port": "6701", "berth.user": "alice"}},
            "HostConfig": {"NanoCpus": 1_500_000_000, "Memory": 64 * 2**20 + 1, "PidsLimit": 0,
                           "CpusetCpus": "0-1,3", "CpusetMems": "0-1"}}
    spec = spec_from_request(request_from_inspect(data))
    assert (spec.worker_id, spec.topology_id, spec.port, spec.user, spec.image) == ("w1", "t1", 6701, "alice",
                                                                                   "storm/py:3")
    assert (spec.cpu_percent, spec.memory_mb, spec.pids_limit, spec.cores, spec.numa_node) == (150, 65, None,
                                                                                               (0, 1, 3), None)


def test_a_process_is_boxed_only_with_every_hardening_a_worker_gets() -> None:
    from berth._node.audit_parent import boxed

    worker = {"Uid": "2101\t2101\t2101\t2101", "CapEff": "0000000000000000", "CapBnd": "0000000000000000",
              "NoNewPrivs": "1", "Seccomp": "2"}
    assert boxed(worker)
    for key, value in (("Uid", "0\t0\t0\t0"), ("Uid", "2101\t0\t2101\t2101"), ("CapEff", "0000000000000400"),
                       ("CapBnd", "000001ffffffffff"), ("NoNewPrivs", "0"), ("Seccomp", "0"), ("CapEff", "zz")):
        assert not boxed({**worker, key: value}), (key, value)
    assert not boxed({})
