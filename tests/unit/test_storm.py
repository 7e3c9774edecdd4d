"""Golden tests: a storm.yaml gives Storm's own line, token for token, and Storm's script, byte for byte.

Every expected token is derived from Storm's code at apache/storm 73da988d9ac3 (master, after
v2.8.8); each test names the lines it follows. Abbreviations: DM = storm-server/.../container/
docker/DockerManager.java, OCM = .../container/oci/OciContainerManager.java, DRC = .../docker/
DockerRunCommand.java, CU = storm-client/.../utils/ConfigUtils.java, defaults = conf/defaults.yaml.
Numbers in issue 12's list are given as [n].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from berth import HostFacts, NodeConfig, WorkerSpec, build_plan, docker_run_argv
from berth._core.plan import draft_plan
from berth._exceptions import ConfigError, PolicyError
from berth._runtimes.runc.config import RuncSection
from berth._storm.explain import storm_notes, storm_view_of
from berth._storm.yaml import config_from_storm

from .conftest import ALICE

HOST = HostFacts(cpus=frozenset(range(4)), mems=frozenset({0, 1}))
SPEC = WorkerSpec(worker_id="9c3e-41ab", topology_id="wc-1-1700000000", port=6703, user="alice",
                  command=("java", "-Xmx768m", "org.apache.storm.daemon.worker.Worker"),
                  env={"LD_LIBRARY_PATH": "/opt/lib"}, cpu_percent=260, memory_mb=1024)


@pytest.fixture
def n(tmp_path: Path) -> dict[str, str]:
    """A Storm node's host paths: install dir, local and log dirs, nscd dir, a ro mount, seccomp."""
    p = {k: tmp_path / k for k in ("apache-storm-2.8.8", "storm-local", "logs", "nscd", "etc-storm")}
    for d in p.values():
        d.mkdir()
    (tmp_path / "seccomp.json").write_text("{}")
    out = {k: str(v) for k, v in p.items()}
    out.update(home=out.pop("apache-storm-2.8.8"), local=out.pop("storm-local"), tmp=str(tmp_path),
               seccomp=str(tmp_path / "seccomp.json"), etc=out.pop("etc-storm"))
    return out


def storm_yaml(n: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Docker-support.md's settings, with this node's paths and Storm's keys only."""
    data: dict[str, Any] = {
        "storm.home": n["home"], "storm.local.dir": n["local"], "storm.log.dir": n["logs"],
        "storm.resource.isolation.plugin.enable": True,
        "storm.resource.isolation.plugin": "org.apache.storm.container.docker.DockerManager",
        "storm.oci.allowed.images": ["storm/worker:2.6"], "storm.oci.image": "storm/worker:2.6",
        "storm.oci.nscd.dir": n["nscd"], "storm.oci.readonly.bindmounts": [n["etc"]],
        "storm.oci.seccomp.profile": n["seccomp"],
    }
    data.update({k.replace("_", "."): v for k, v in extra.items()})
    return {k: v for k, v in data.items() if v is not None}


def line(config: NodeConfig, spec: WorkerSpec = SPEC, storm: bool = True) -> list[str]:
    draft = draft_plan(spec, config, ALICE, HOST)  # Storm's line even where berth refuses
    return list(storm_view_of(spec, config, draft).argv) if storm else docker_run_argv(draft.plan)


def expected(n: dict[str, str], local: str | None = None, artifacts: str | None = None, tail: tuple[str, ...] = (),
             cpus: str = "--cpus=2.6") -> list[str]:
    """DM.launchWorkerProcess for SPEC, in DRC's order; `local` and `artifacts` as Storm's joins spell them."""
    local = local or n["local"]
    root = f"{local}/workers/9c3e-41ab"
    work = root.replace("//", "/")
    art = f"{artifacts or n['logs'] + '/workers-artifacts'}/wc-1-1700000000/6703"
    shared = f"{local}/supervisor/stormdist/wc-1-1700000000/shared_by_topology"
    return ["run", "--name=9c3e-41ab", "--user=1001:1001", "-d", "--net=host", "--read-only",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",                    # defaults: storm.oci.cgroup.root
            "-v", f"{n['home']}:{n['home']}:ro",
            "-v", f"{local}/supervisor:{local}/supervisor:ro",
            "-v", f"{root}:{root}", "-v", f"{art}:{art}",
            "-v", f"{local}/workers-users/9c3e-41ab:{local}/workers-users/9c3e-41ab",
            "-v", f"{n['nscd']}:{n['nscd']}", "-v", f"{shared}:{shared}", "-v", f"{root}/tmp:/tmp",
            "-v", f"{n['etc']}:{n['etc']}:ro",
            *tail,
            "--cgroup-parent=/storm",                                    # defaults: storm.oci.cgroup.parent
            "--group-add", "1001", "--group-add", "2001",               # DRC.groupAdd: "--group-add <gid>" items
            f"--workdir={work}", f"--cidfile={root}/container.cid",     # File.getAbsolutePath vs CU string join
            "--cap-drop=ALL", "--security-opt", "no-new-privileges", "--security-opt", f"seccomp={n['seccomp']}",
            cpus,                                                       # no --memory: enforcement off by default
            "storm/worker:2.6", "bash", f"{work}/storm-worker-script.sh"]


def test_docker_support_settings_give_storms_line(n: dict[str, str]) -> None:
    """DM.launchWorkerProcess lines 101-152 (mounts, cpuset, cgroup parent .. seccomp, cpus, memory,
    the bash command) with OCM.prepare's values; CU.workerRoot/workerArtifactsRoot/sharedByTopologyDir."""
    assert line(config_from_storm(storm_yaml(n))) == expected(n)


def test_berth_line_is_storms_plus_berths_hardening(n: dict[str, str]) -> None:
    """[3] What berth launches keeps memory = swap limit, pids limit, --init and labels."""
    config = config_from_storm(storm_yaml(n))
    berth = line(config, storm=False)
    assert berth[berth.index("--cpus=2.6") + 1:berth.index("--init") + 1] == [
        "--memory=1024m", "--pids-limit=1024", "--memory-swap=1024m", "--log-driver=json-file", "--log-opt",
        "max-size=20m", "--log-opt", "max-file=5", "--init"]
    notes = storm_notes(SPEC, config, build_plan(SPEC, config, ALICE, HOST))
    assert any("enforcement.enable is false" in x and "1024 MiB with no swap" in x for x in notes)


# [1] Storm's defaults ------------------------------------------------------------------------------

def test_storm_defaults_apply_to_a_storm_yaml_only(n: dict[str, str]) -> None:
    """defaults.yaml: storm.local.dir "storm-local", storm.oci.cgroup.root "/sys/fs/cgroup",
    storm.oci.cgroup.parent "/storm", storm.oci.nscd.dir "/var/run/nscd", storm.workers.artifacts.dir
    "workers-artifacts", storm.cgroup.memory.enforcement.enable false."""
    c = config_from_storm({"storm.home": n["home"], "storm.log.dir": n["logs"]})
    assert (c.container.cgroup_root, c.container.cgroup_parent, c.container.nscd_dir) == (
        "/sys/fs/cgroup", "/storm", "/var/run/nscd")
    assert c.node.local_dir == n["home"] + "/storm-local"
    assert c.artifacts_root == n["logs"] + "/workers-artifacts"
    assert c.storm is not None and c.storm.memory_enforcement is False
    berth = NodeConfig()  # berth.toml keeps berth's own defaults
    assert (berth.container.cgroup_parent, berth.container.nscd_dir, berth.storm) == ("/berth", "", None)


# [2] The install dir -------------------------------------------------------------------------------

def test_storm_home_from_the_yaml_else_storm_home_else_an_error(n: dict[str, str], tmp_path: Path) -> None:
    """bin/storm.py passes -Dstorm.home=<its resolved install dir>; OCM.prepare reads that property."""
    link = tmp_path / "current"
    link.symlink_to(n["home"])
    data = storm_yaml(n, storm_home=None)
    assert config_from_storm(data, env={"STORM_HOME": str(link)}).node.install_dir == n["home"]
    assert config_from_storm({**data, "storm.home": str(link)}, env={}).node.install_dir == n["home"]
    with pytest.raises(ConfigError, match=r"^storm\.home: not set: .*STORM_HOME"):
        config_from_storm(data, env={})


def test_relative_local_dir_is_joined_to_the_install_dir(n: dict[str, str]) -> None:
    """CU.absoluteStormLocalDir: stormHome + "/" + storm.local.dir. Storm launches this; berth refuses,
    because every worker would read the node's local dir through the read-only install dir."""
    config = config_from_storm(storm_yaml(n, storm_local_dir="data/local"))
    local = n["home"] + "/data/local"
    assert config.node.local_dir == local
    assert line(config) == expected(n, local=local)
    with pytest.raises(PolicyError, match=r"^storm\.local\.dir: .* lies under the install dir"):
        build_plan(SPEC, config, ALICE, HOST)


# [3] Memory, [4] CPU -------------------------------------------------------------------------------

def test_memory_on_storms_line_only_with_enforcement(n: dict[str, str]) -> None:
    """OCM.reserveResourcesForWorker puts the memory only when storm.cgroup.memory.enforcement.enable;
    DM then adds DRC.setMemoryMb ("--memory=<mb>m") after --cpus."""
    config = config_from_storm(storm_yaml(n, storm_cgroup_memory_enforcement_enable=True))
    argv = line(config)
    assert argv[argv.index("--cpus=2.6") + 1] == "--memory=1024m"
    assert not any("enforcement" in x for x in storm_notes(SPEC, config, build_plan(SPEC, config, ALICE, HOST)))


@pytest.mark.parametrize(("limit", "token"), [(150, "--cpus=1.5"), (150.9, "--cpus=1.5"), (100, "--cpus=1.0")])
def test_worker_cpu_limit_overrides_the_request(n: dict[str, str], limit: float, token: str) -> None:
    """OCM.reserveResourcesForWorker: ((Number) storm.worker.cgroup.cpu.limit).intValue() replaces the
    worker's cpu; DM: setCpus(cpu / 100.0), Double.toString."""
    config = config_from_storm(storm_yaml(n, storm_worker_cgroup_cpu_limit=limit))
    assert line(config) == expected(n, cpus=token)
    assert token in line(config, storm=False)  # what berth launches follows it too


def test_cpu_limit_that_truncates_to_zero_is_refused(n: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^storm\.worker\.cgroup\.cpu\.limit: 0.5 is truncated to 0"):
        config_from_storm(storm_yaml(n, storm_worker_cgroup_cpu_limit=0.5))


# [5] NUMA --------------------------------------------------------------------------------------------

NUMA = {"0": {"numa.cores": [3, 0, 2], "numa.memory.mb": 4096, "numa.ports": [6700, 6703]},
        1: {"numa.cores": [1], "numa.memory.mb": 4096, "numa.ports": [6701], "numa.generic.resources.map": {}}}


def test_numa_zone_of_the_port_pins_cores_in_storms_order(n: dict[str, str]) -> None:
    """BasicContainer.launch: SupervisorUtils.getNumaIdForPort(port); OCM.reserveResourcesForWorker: the
    zone's numa.cores as listed; DRC.addCpuSetBindings: --cpuset-cpus=<joined by ','> --cpuset-mems=<zone id>,
    right after the mounts (DM line 130)."""
    config = config_from_storm(storm_yaml(n, supervisor_numa_meta=NUMA))
    assert line(config) == expected(n, tail=("--cpuset-cpus=3,0,2", "--cpuset-mems=0"))
    assert "--cpuset-cpus=1" in line(config, SPEC.model_copy(update={"port": 6701}))
    assert not any(t.startswith("--cpuset") for t in line(config, SPEC.model_copy(update={"port": 6702})))
    berth = build_plan(SPEC, config, ALICE, HOST)
    assert (berth.resources.cores, berth.resources.numa_node) == ((3, 0, 2), 0)


def test_numa_errors(n: dict[str, str]) -> None:
    """DaemonConfigValidation.NumaEntryValidator: each key required; no duplicate cores."""
    bad = {"0": {"numa.cores": [0], "numa.memory.mb": 1}}
    with pytest.raises(ConfigError, match=r"numa configuration key \[numa\.ports\] is missing"):
        config_from_storm(storm_yaml(n, supervisor_numa_meta=bad))
    dup = {"0": {"numa.cores": [0, 0], "numa.memory.mb": 1, "numa.ports": [6700]}}
    with pytest.raises(ConfigError, match="Duplicate cores"):
        config_from_storm(storm_yaml(n, supervisor_numa_meta=dup))
    config = config_from_storm(storm_yaml(n, supervisor_numa_meta=NUMA))
    with pytest.raises(PolicyError, match="bound to NUMA zone 0"):
        build_plan(SPEC.model_copy(update={"cores": (1,)}), config, ALICE, HOST)


# [6] Artifacts -----------------------------------------------------------------------------------------

def test_artifacts_dir_moves_the_artifacts_mount(n: dict[str, str]) -> None:
    """CU.workerArtifactsRootImpl: an absolute storm.workers.artifacts.dir as given, a relative one
    joined to the log dir; then + "/" + topology id + "/" + port."""
    absolute = n["tmp"] + "/artifacts/"
    config = config_from_storm(storm_yaml(n, storm_workers_artifacts_dir=absolute))
    assert line(config) == expected(n, artifacts=absolute)
    lay = build_plan(SPEC, config, ALICE, HOST).layout
    assert lay.artifacts == n["tmp"] + "/artifacts/wc-1-1700000000/6703"
    relative = config_from_storm(storm_yaml(n, storm_workers_artifacts_dir="arts"))
    assert line(relative) == expected(n, artifacts=n["logs"] + "/arts")
    assert n["logs"] + "/arts" in relative.forbidden_mounts


# [7] One string for a list ----------------------------------------------------------------------------

def test_list_keys_take_a_single_string(n: dict[str, str], tmp_path: Path) -> None:
    """OCM.prepare and OciUtils.getAllowedImages read these through ObjectReader.getStrings; DM adds the
    read-write list after the read-only one."""
    (tmp_path / "scratch").mkdir()
    rw = n["tmp"] + "/scratch/"  # Storm's token is the string as written
    config = config_from_storm(storm_yaml(n, storm_oci_readonly_bindmounts=n["etc"],
                                          storm_oci_readwrite_bindmounts=rw,
                                          storm_oci_allowed_images="storm/worker:2.6"))
    assert config.images.allowed == ("storm/worker:2.6",)
    assert config.container.readonly_mounts == (n["etc"],)
    argv = line(config)
    i = argv.index(f"{n['etc']}:{n['etc']}:ro")
    assert argv[i + 1:i + 3] == ["-v", f"{rw}:{rw}"]


# [9] Paths ---------------------------------------------------------------------------------------------

def test_each_path_is_resolved_as_storm_resolves_it(n: dict[str, str], tmp_path: Path) -> None:
    """Resolved through symlinks: the install dir (bin/storm.py: os.path.realpath) and the log dir
    (CU.getLogDir: getCanonicalPath). As written: the local dir (CU.absoluteStormLocalDir) and every
    mount source from the yaml (OCM.prepare; DRC only checks it exists). Joins keep a trailing '/'
    ("//"); --workdir and the script come from a java.io.File, which drops it."""
    for name, target in (("home-link", n["home"]), ("log-link", n["logs"]), ("etc-link", n["etc"])):
        (tmp_path / name).symlink_to(target)
    etc_link = f"{n['tmp']}/etc-link"
    config = config_from_storm(storm_yaml(n, storm_home=f"{n['tmp']}/home-link", storm_log_dir=f"{n['tmp']}/log-link",
                                          storm_local_dir=n["local"] + "/", storm_oci_readonly_bindmounts=[etc_link]))
    want = expected({**n, "etc": etc_link}, local=n["local"] + "/")
    assert line(config) == want
    assert "--workdir=" + n["local"] + "/workers/9c3e-41ab" in want
    berth = build_plan(SPEC, config, ALICE, HOST)
    assert berth.mounts[-1].source == n["etc"]  # berth mounts what the link points to now
    assert berth.layout.worker_root == n["local"] + "/workers/9c3e-41ab"


def test_cgroup_parent_is_made_absolute_and_otherwise_kept(n: dict[str, str]) -> None:
    """OCM.prepare: a parent without a leading '/' gets one; nothing else is changed."""
    config = config_from_storm(storm_yaml(n, storm_oci_cgroup_parent="storm/workers/"))
    assert "--cgroup-parent=/storm/workers/" in line(config)
    assert config.container.cgroup_parent == "/storm/workers"
    assert "--cgroup-parent=/storm/workers" in line(config, storm=False)


def test_a_path_with_a_space_stays_one_token(n: dict[str, str], tmp_path: Path) -> None:
    """Deliberate difference: Storm joins its line with spaces and the launcher splits it again, so
    "/opt/storm home" becomes two words there; berth keeps each path one (quoted) token."""
    home = tmp_path / "storm home"
    home.mkdir()
    argv = line(config_from_storm(storm_yaml(n, storm_home=str(home))))
    assert f"{home}:{home}:ro" in argv


# [11] Known traps -------------------------------------------------------------------------------------

def test_swapped_cgroup_root_and_parent_are_named(n: dict[str, str]) -> None:
    """Docker-support.md's example sets storm.oci.cgroup.root "/storm" and storm.oci.cgroup.parent
    "/sys/fs/cgroup"; DRC.addReadOnlyMountLocation would fail with "SourcePath /storm doesn't exit"."""
    config = config_from_storm(storm_yaml(n, storm_oci_cgroup_root="/storm", storm_oci_cgroup_parent="/sys/fs/cgroup"))
    assert config.storm is not None and any("did you swap" in x for x in config.storm.notes)
    with pytest.raises(ConfigError, match=r"^storm\.oci\.cgroup\.root: /storm does not exist .*did you swap "
                                          r"storm\.oci\.cgroup\.root and storm\.oci\.cgroup\.parent\?"):
        build_plan(SPEC, config, ALICE, HOST)


def test_default_image_must_be_allowed(n: dict[str, str]) -> None:
    """OciUtils.validateImageInDaemonConf: Storm does not start when storm.oci.image is not allowed."""
    with pytest.raises(ConfigError, match=r"^storm\.oci\.image: storm/other:1 is not in the list"):
        config_from_storm(storm_yaml(n, storm_oci_image="storm/other:1"))


RUNC = "org.apache.storm.container.oci.RuncLibContainerManager"


def test_isolation_plugin_picks_the_runtime(n: dict[str, str]) -> None:
    runc = config_from_storm({**storm_yaml(n, storm_resource_isolation_plugin=RUNC),
                              "berth.runc.images": {"storm/worker:2.6": "/srv/rootfs/worker"}})
    assert runc.node.runtime == "runc"
    off = config_from_storm(storm_yaml(n, storm_resource_isolation_plugin_enable=False))
    assert off.node.runtime == "docker" and off.storm is not None
    assert any("did you forget storm.resource.isolation.plugin.enable" in x for x in off.storm.notes)


def test_a_storm_yaml_from_disk(n: dict[str, str], tmp_path: Path) -> None:
    from berth import load_config

    f = tmp_path / "storm.yaml"
    f.write_text(yaml.safe_dump(storm_yaml(n)))
    assert line(load_config(f)) == expected(n)


# A careless operator's storm.yaml ----------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "error"), [
    ({1: "x"}, r"^1: keys must be strings"),
    ({"storm.oci.readonly.bindmounts": [1]}, r"^storm\.oci\.readonly\.bindmounts\[0\]: must be a string"),
    ({"storm.oci.readonly.bindmounts": ["etc/storm"]}, r"^storm\.oci\.readonly\.bindmounts: must be an absolute"),
    ({"storm.oci.readonly.bindmounts": ["/a:/b"]}, r"^storm\.oci\.readonly\.bindmounts: must not contain ':'"),
    ({"storm.oci.cgroup.parent": "../escape"}, r"^storm\.oci\.cgroup\.parent: must be a cgroup path"),
    ({"storm.worker.cgroup.cpu.limit": True}, r"^storm\.worker\.cgroup\.cpu\.limit: must be a positive number"),
    ({"storm.cgroup.memory.enforcement.enable": "yes"}, r"^storm\.cgroup\.memory\.enforcement\.enable: "),
    ({"storm.log.dir": "logs"}, r"^storm\.log\.dir: must be absolute"),
    ({"supervisor.numa.meta": {"a": {"numa.cores": [0], "numa.memory.mb": 1, "numa.ports": [1]}}},
     r"^supervisor\.numa\.meta: zone a: id: zone 'a' must be a memory node number"),
    ({"supervisor.numa.meta": {"0": {"numa.cores": [0], "numa.memory.mb": 1, "numa.ports": [6700]},
                               "1": {"numa.cores": [1], "numa.memory.mb": 1, "numa.ports": [6700]}}},
     r"^supervisor\.numa\.meta: port 6700 is in NUMA zones 0 and 1"),
    ({"supervisor.numa.meta": {"0": {"numa.cores": [0], "numa.memory.mb": 1, "numa.ports": [1], "numa.typo": 1}}},
     r"^supervisor\.numa\.meta: zone 0: unknown key numa\.typo"),
])
def test_bad_storm_values_are_errors_naming_the_storm_key(n: dict[str, str], extra: dict[Any, Any],
                                                          error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config_from_storm({**storm_yaml(n), **extra})


def test_values_from_the_yaml_that_the_node_cannot_honour_name_their_key(n: dict[str, str]) -> None:
    too_many = config_from_storm(storm_yaml(n, storm_worker_cgroup_cpu_limit=900))
    with pytest.raises(PolicyError, match=r"^storm\.worker\.cgroup\.cpu\.limit: 900 is more than"):
        build_plan(SPEC, too_many, ALICE, HOST)
    ghost = config_from_storm(storm_yaml(n, supervisor_numa_meta={"0": {
        "numa.cores": [0, 12], "numa.memory.mb": 1, "numa.ports": [6703]}}))
    with pytest.raises(PolicyError, match=r"^supervisor\.numa\.meta: cpu 12 does not exist"):
        build_plan(SPEC, ghost, ALICE, HOST)


def test_a_forbidden_mount_shows_storms_line_but_never_launches(n: dict[str, str]) -> None:
    """Storm mounts whatever storm.oci.readwrite.bindmounts says; berth refuses /proc, the engine's
    socket, the install dir's parents… (docs/security.md). explain --storm still prints Storm's line."""
    config = config_from_storm(storm_yaml(n, storm_oci_readwrite_bindmounts=["/proc"]))
    view = storm_view_of(SPEC, config, draft_plan(SPEC, config, ALICE, HOST))
    assert view.refusals == ("storm.oci.readwrite.bindmounts[0]: /proc is /proc or lies under it (forbidden)",)
    assert "/proc:/proc" in view.argv
    with pytest.raises(PolicyError, match=r"^storm\.oci\.readwrite\.bindmounts\[0\]: /proc"):
        build_plan(SPEC, config, ALICE, HOST)


def test_memory_above_the_nodes_maximum_shows_storms_line_but_never_launches(n: dict[str, str]) -> None:
    """Storm has no per-worker memory maximum: without enforcement its line has no --memory at all
    (OCM.reserveResourcesForWorker), with it DRC.setMemoryMb passes the request's value. berth's
    maximum (container.max_memory_mb) is its own hardening: a refusal kept for explain --storm."""
    big = SPEC.model_copy(update={"memory_mb": 999_999})
    host = HostFacts(cpus=HOST.cpus, mems=HOST.mems, memory_mb=8192)
    for enforce, tail in ((False, []), (True, ["--memory=999999m"])):
        config = config_from_storm(storm_yaml(n, storm_cgroup_memory_enforcement_enable=enforce or None))
        view = storm_view_of(big, config, draft_plan(big, config, ALICE, host))
        assert list(view.argv) == [*expected(n)[:-4], "--cpus=2.6", *tail, *expected(n)[-3:]]
        assert view.refusals == ("memory_mb: 999999 MiB is above the node's maximum of 7168 MiB per worker "
                                 "(berth.container.max.memory.mb)",)
        with pytest.raises(PolicyError, match=r"^memory_mb: 999999 MiB is above the node's maximum"):
            build_plan(big, config, ALICE, host)


def test_only_numa_zones_pin_on_storms_line(n: dict[str, str]) -> None:
    """[5] Storm's worker has no cores of its own: DM adds --cpuset-cpus/--cpuset-mems only from
    workerToCores/workerToMemoryZone, which OCM.reserveResourcesForWorker fills from the port's NUMA
    zone. A request that pins cores on a port in no zone is pinned by berth, and Storm's line says
    nothing of it (a note does)."""
    pinned = SPEC.model_copy(update={"cores": (1, 3), "numa_node": 1})
    config = config_from_storm(storm_yaml(n))
    assert line(config, pinned) == expected(n)
    assert "--cpuset-cpus=1,3" in line(config, pinned, storm=False)
    notes = storm_notes(pinned, config, build_plan(pinned, config, ALICE, HOST))
    assert any(x.startswith("cores: the request pins cpus 1,3 and memory node 1") for x in notes)


def test_runc_from_a_storm_yaml_needs_its_image_directories_named_at_load(n: dict[str, str]) -> None:
    """Storm's runc manager takes images from HDFS layers berth does not read: a storm.yaml that
    selects it is refused at load, naming the key that maps images to root filesystem directories,
    instead of every launch failing later."""
    with pytest.raises(ConfigError, match=r"^berth\.runc\.images: storm\.resource\.isolation\.plugin selects "
                                          r"RuncLibContainerManager.*storm\.oci\.image storm/worker:2\.6 has none"):
        config_from_storm(storm_yaml(n, storm_resource_isolation_plugin=RUNC))
    with pytest.raises(ConfigError, match=r"^berth\.runc\.images: .*storm\.oci\.image storm/worker:2\.6 has none"):
        config_from_storm({**storm_yaml(n, storm_resource_isolation_plugin=RUNC),
                           "berth.runc.images": {"storm/other:1": "/srv/rootfs/other"}})
    with pytest.raises(ConfigError, match=r"^berth\.runc\.image\.root: must be an absolute path"):
        config_from_storm({**storm_yaml(n, storm_resource_isolation_plugin=RUNC), "berth.runc.image.root": "rootfs"})
    c = config_from_storm({**storm_yaml(n, storm_resource_isolation_plugin=RUNC, storm_oci_image="berth/python:1",
                                        storm_oci_allowed_images=["berth/python:1"]),
                           "berth.runc.image.root": "/srv/rootfs"})
    runc = RuncSection.of(c)
    assert (runc.image_root, runc.image_path("berth/python:1")) == ("/srv/rootfs", "/srv/rootfs/python")
    assert c.storm is not None and "berth.runc.image.root" not in c.storm.unused_keys
    docker = config_from_storm({**storm_yaml(n), "berth.runc.images": {"storm/worker:2.6": "/srv/rootfs/worker"}})
    assert docker.node.runtime == "docker"
    assert RuncSection.of(docker).images == {"storm/worker:2.6": "/srv/rootfs/worker"}
