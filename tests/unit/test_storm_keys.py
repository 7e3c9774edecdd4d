"""[8] Every key Storm defines loads; [12] the storm.yaml -> berth.toml mapping; Storm's doc examples.

The examples are the storm.yaml blocks of docs/Docker-support.md ("Example") and docs/OCI-support.md
("Configurations") at apache/storm 73da988d9ac3, as printed there.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from berth import NodeConfig, WorkerSpec, build_plan
from berth._cli import main
from berth._core.render import text_summary
from berth._core.tomlout import config_toml
from berth._exceptions import ConfigError
from berth._storm.explain import storm_notes
from berth._storm.loading import checked_config
from berth._storm.yaml import USED, config_from_storm, storm_keys

from .conftest import ALICE, FOUR_CPUS

DOCKER_EXAMPLE = """
storm.resource.isolation.plugin.enable: true
storm.resource.isolation.plugin: "org.apache.storm.container.docker.DockerManager"
storm.oci.allowed.images: ["xxx.xxx.com:8080/storm/storm/rhel7:latest"]
storm.oci.image: "xxx.xxx.com:8080/storm/storm/rhel7:latest"
storm.oci.cgroup.root: "/storm"
storm.oci.cgroup.parent: "/sys/fs/cgroup"
storm.oci.readonly.bindmounts:
    - "/etc/storm"
storm.oci.nscd.dir: "/var/run/nscd"
supervisor.worker.launcher: "/usr/share/apache-storm-2.3.0/bin/worker-launcher"
"""

OCI_EXAMPLE = """
storm.resource.isolation.plugin: "org.apache.storm.container.oci.RuncLibContainerManager"

storm.oci.allowed.images:
    - "storm/rhel7:dev_current"
    - "storm/rhel7:dev_previous"
    - "storm/rhel7:dev_test"
storm.oci.image: "storm/rhel7:dev_current"

storm.oci.cgroup.parent: "/storm"
storm.oci.cgroup.root: "/sys/fs/cgroup"
storm.oci.image.hdfs.toplevel.dir: "hdfs://host:port/containers/"
storm.oci.image.tag.to.manifest.plugin: "org.apache.storm.container.oci.LocalOrHdfsImageTagToManifestPlugin"
storm.oci.local.or.hdfs.image.tag.to.manifest.plugin.hdfs.hash.file: "hdfs://host:port/containers/image-tag-to-hash"
storm.oci.manifest.to.resources.plugin: "org.apache.storm.container.oci.HdfsManifestToResourcesPlugin"
storm.oci.readonly.bindmounts:
    - "/home/y/lib64/storm"
    - "/etc/krb5.conf"

storm.oci.resources.localizer: "org.apache.storm.container.oci.HdfsOciResourcesLocalizer"
storm.oci.seccomp.profile: "/home/y/conf/storm/seccomp.json"
"""

HOME = {"STORM_HOME": "/usr/share/apache-storm-2.3.0"}


def test_docker_support_example_loads_with_the_swap_warning() -> None:
    c = config_from_storm(yaml.safe_load(DOCKER_EXAMPLE), env=HOME)
    assert c.node.runtime == "docker"
    assert c.node.local_dir == "/usr/share/apache-storm-2.3.0/storm-local"
    assert c.storm is not None and c.storm.unused_keys == ("supervisor.worker.launcher",)
    assert any("did you swap storm.oci.cgroup.root and storm.oci.cgroup.parent" in n for n in c.storm.notes)


def test_oci_support_example_loads() -> None:
    """Storm's example as printed loads: it leaves storm.resource.isolation.plugin.enable at its default,
    false, so Storm would not use RuncLibContainerManager (its supervisor takes the default isolation
    manager) and neither does berth: docker, with a note. Enabled, the plugin needs what Storm's HDFS
    image layers gave, a root filesystem directory per image (a key Storm ignores)."""
    c = config_from_storm(yaml.safe_load(OCI_EXAMPLE), env=HOME)
    assert c.node.runtime == "docker"
    assert c.container.readonly_mounts == ("/home/y/lib64/storm", "/etc/krb5.conf")
    assert c.container.seccomp_profile == "/home/y/conf/storm/seccomp.json"
    assert c.images.allowed == ("storm/rhel7:dev_current", "storm/rhel7:dev_previous", "storm/rhel7:dev_test")
    assert c.storm is not None and "storm.oci.resources.localizer" in c.storm.unused_keys
    assert any("did you forget storm.resource.isolation.plugin.enable: true" in n and
               n.endswith("berth runs workers in docker containers") for n in c.storm.notes)
    enabled = OCI_EXAMPLE + "storm.resource.isolation.plugin.enable: true\n"
    with pytest.raises(ConfigError, match=r"^berth\.runc\.images: .*storm/rhel7:dev_current has none"):
        config_from_storm(yaml.safe_load(enabled), env=HOME)
    mapped = enabled + 'berth.runc.images: {"storm/rhel7:dev_current": /srv/rootfs/rhel7}\n'
    assert config_from_storm(yaml.safe_load(mapped), env=HOME).node.runtime == "runc"


@pytest.mark.parametrize("key", [
    "storm.oci.image.hdfs.toplevel.dir", "storm.oci.image.tag.to.manifest.plugin",
    "storm.oci.manifest.to.resources.plugin", "storm.oci.resources.localizer", "storm.oci.resources.local.dir",
    "storm.oci.layer.mounts.to.keep", "storm.oci.local.or.hdfs.image.tag.to.manifest.plugin.local.hash.file",
    "storm.oci.local.or.hdfs.image.tag.to.manifest.plugin.num.manifests.to.cache",
    "supervisor.numa.meta", "storm.worker.cgroup.cpu.limit", "topology.oci.image", "nimbus.seeds",
    "storm.zookeeper.superACL",  # only in old releases
])
def test_storm_defines_the_key(key: str) -> None:
    assert key in storm_keys()


def test_every_storm_key_loads() -> None:
    """Config.java, DaemonConfig.java and defaults.yaml of every release: accepted (null: no value)."""
    c = config_from_storm(dict.fromkeys(storm_keys()), env=HOME)
    assert c.storm is not None and len(c.storm.unused_keys) == len(storm_keys() - USED)


def test_unused_keys_are_listed_by_explain_text(tmp_path: Path) -> None:
    data = {"storm.home": str(tmp_path), "storm.local.dir": "/data/storm", "storm.log.dir": "/logs/storm",
            "storm.oci.image": "storm/worker:2.6", "storm.oci.allowed.images": "storm/worker:2.6",
            "storm.oci.nscd.dir": str(tmp_path / "nscd"), "storm.zookeeper.servers": ["zk1"]}
    (tmp_path / "nscd").mkdir()
    c = config_from_storm(data, env={})
    spec = WorkerSpec(worker_id="w1", topology_id="t1", port=6700, user="alice", command=("x",))
    plan = build_plan(spec, c, ALICE, FOUR_CPUS)
    text = text_summary(plan, c.storm.unused_keys if c.storm else (), storm_notes(spec, c, plan))
    assert "Storm key not used by berth: storm.zookeeper.servers" in text
    assert "differences from Storm" in text and "no swap beyond it" in text


def test_a_key_no_storm_defines_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^storm\.oci\.readonly\.bindmount: unknown key: no Storm version "
                                          r"defines it \(did you mean storm\.oci\.readonly\.bindmounts\?\)"):
        config_from_storm({"storm.oci.readonly.bindmount": ["/etc/storm"]}, env=HOME)
    with pytest.raises(ConfigError, match=r"^storm\.local\.dirr: .*; supervisor\.slots: unknown key"):
        config_from_storm({"storm.local.dirr": "/x", "supervisor.slots": [1]}, env=HOME)


# [12] storm.yaml -> berth.toml ------------------------------------------------------------------------

def _without_notes(c: NodeConfig) -> NodeConfig:
    assert c.storm is not None
    return c.model_copy(update={"storm": c.storm.model_copy(update={"unused_keys": (), "notes": ()})})


@pytest.mark.parametrize("example", [DOCKER_EXAMPLE, OCI_EXAMPLE])
def test_printed_toml_loads_to_the_same_config(example: str) -> None:
    data = yaml.safe_load(example)
    data.update({"storm.local.dir": "/var/storm/", "storm.log.dir": "/var/log/storm", "storm.local.hostname": "n7",
                 "supervisor.numa.meta": {"0": {"numa.cores": [1, 0], "numa.memory.mb": 1024, "numa.ports": [6700]}},
                 "storm.worker.cgroup.cpu.limit": 150, "storm.workers.artifacts.dir": "/var/arts",
                 "berth.runc.images": {"storm/rhel7:dev_current": "/srv/rootfs/rhel7"}})
    storm = config_from_storm(data, env=HOME)
    text = config_toml(storm)
    toml = tomllib.loads(text)
    assert toml["node"]["local_dir"] == "/var/storm" and toml["storm"]["local_dir"] == "/var/storm/"
    assert toml["storm"]["numa"] == [{"id": "0", "cores": [1, 0], "memory_mb": 1024.0, "ports": [6700]}]
    from berth._core.config import tuples as _tuples

    assert checked_config(_tuples(toml)) == _without_notes(storm)


def test_config_from_storm_command(tmp_path: Path) -> None:
    f = tmp_path / "storm.yaml"
    f.write_text(DOCKER_EXAMPLE)
    r = CliRunner().invoke(main, ["config", "--from-storm", str(f)], env=HOME)
    assert r.exit_code == 0, r.output
    toml = tomllib.loads(r.stdout)
    assert toml["container"]["cgroup_root"] == "/storm" and toml["container"]["cgroup_parent"] == "/sys/fs/cgroup"
    assert toml["node"]["install_dir"] == "/usr/share/apache-storm-2.3.0"
    assert "#   supervisor.worker.launcher" in r.stdout
    assert "did you swap" in r.stderr


def test_docs_list_every_storm_key() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "storm.md").read_text()
    missing = [k for k in sorted(storm_keys()) if f"`{k}`" not in doc]
    assert not missing, f"docs/storm.md does not list {missing[:5]}…"


def test_a_secured_clusters_jaas_key_loads() -> None:
    """Storm reads ``java.security.auth.login.config`` from its config by name (ClientAuthUtils
    .getJaasConf, ConfigUtils.readStormConfig copies the system property there), not from a Config
    constant: a supervisor's storm.yaml with SASL digest or Kerberos sets it."""
    c = config_from_storm({"java.security.auth.login.config": "/etc/storm/jaas.conf"}, env=HOME)
    assert c.storm is not None and c.storm.unused_keys == ("java.security.auth.login.config",)
