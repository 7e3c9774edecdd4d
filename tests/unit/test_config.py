from __future__ import annotations

from pathlib import Path

import pytest

from berth import ConfigError, NodeConfig, load_config
from berth._core.config import DEFAULT_FORBIDDEN
from berth._runtimes.docker import engine_socket
from berth._runtimes.runc.config import RuncSection
from berth._storm.loading import checked_config as config_from_mapping


def test_defaults() -> None:
    c = NodeConfig()
    assert c.node.min_uid == 1000
    assert c.node.banned_users == ("bin", "nobody")
    assert c.node.runtime == "docker"
    assert c.container.cgroup_root == "/sys/fs/cgroup"
    assert c.container.cgroup_parent == "/berth"
    assert c.container.network == "host"
    assert c.container.umask == "0027"
    assert c.container.shell == "bash"
    assert c.container.pids_limit == 1024
    assert c.container.forbidden_mounts == DEFAULT_FORBIDDEN
    assert c.images.allowed == ()


def test_toml(tmp_path: Path) -> None:
    f = tmp_path / "berth.toml"
    f.write_text("""
[node]
local_dir = "/srv/storm/"
log_dir = "/srv/logs"
name = "n7"
docker_host = "unix:///run/x/docker.sock"
[images]
default = "storm/worker:2.6"
allowed = ["*"]
[container]
cgroup_parent = "storm"
readonly_mounts = ["/etc/storm"]
""")
    c = load_config(f)
    assert c.node.local_dir == "/srv/storm"
    assert c.container.cgroup_parent == "/storm"
    assert c.images.allowed == ("*",)
    assert c.container.readonly_mounts == ("/etc/storm",)
    assert engine_socket(c) == "/run/x/docker.sock"
    forbidden = c.forbidden_mounts
    assert "/srv/storm" in forbidden and "/run/x/docker.sock" in forbidden
    assert "/srv/logs/workers-artifacts" in forbidden


def test_storm_yaml_maps_storm_keys_and_ignores_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "storm.yaml"
    f.write_text("""
storm.home: /opt/storm
storm.local.dir: /storm/local
storm.log.dir: /storm/logs
storm.oci.image: storm/rhel7:latest
storm.oci.allowed.images: [storm/rhel7:latest, storm/rhel8:latest]
storm.oci.cgroup.parent: /storm
storm.oci.nscd.dir: /var/run/nscd
storm.oci.readonly.bindmounts: [/etc/storm]
nimbus.seeds: [a, b]
supervisor.slots.ports: [6700, 6701]
""")
    c = load_config(f)
    assert c.node.local_dir == "/storm/local"
    assert c.images.default == "storm/rhel7:latest"
    assert c.images.allowed == ("storm/rhel7:latest", "storm/rhel8:latest")
    assert c.container.nscd_dir == "/var/run/nscd"
    assert c.container.readonly_mounts == ("/etc/storm",)
    assert c.storm is not None and c.storm.unused_keys == ("nimbus.seeds", "supervisor.slots.ports")


def test_berth_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "b.toml"
    f.write_text('[node]\nname = "from-env"\n')
    monkeypatch.setenv("BERTH_CONFIG", str(f))
    assert load_config().node.name == "from-env"


def test_spec_digest_is_stable_and_tracks_changes() -> None:
    from berth import WorkerSpec
    from berth._core.spec import spec_digest

    a = WorkerSpec(worker_id="ww", topology_id="tt", port=1, user="u", command=("x",), memory_mb=64)
    same = WorkerSpec(worker_id="ww", topology_id="tt", port=1, user="u", command=("x",), memory_mb=64, env={})
    assert spec_digest(a) == spec_digest(same) == "35741cbdb84069fe"
    assert spec_digest(a.model_copy(update={"memory_mb": 65})) != spec_digest(a)
    assert spec_digest(a.model_copy(update={"command": ("y",)})) != spec_digest(a)


def test_the_runc_runtime_needs_a_directory_for_the_default_image_at_load() -> None:
    """Not a launch-time surprise: without one, every launch of the default image would fail."""
    base = {"node": {"runtime": "runc"}, "images": {"default": "berth/python:1"}}
    with pytest.raises(ConfigError, match=r"^runc\.images: runtime runc runs each image from a root filesystem "
                                          r"directory, and images\.default berth/python:1 has none"):
        config_from_mapping(base)
    with pytest.raises(ConfigError, match=r"^runc\.images: .*other/python:1 has none"):
        config_from_mapping({**base, "images": {"default": "other/python:1"}, "runc": {"image_root": "/srv"}})
    root = config_from_mapping({**base, "runc": {"image_root": "/srv"}})
    assert RuncSection.of(root).image_path("berth/python:1") == \
        "/srv/python"
    assert RuncSection.of(config_from_mapping({**base, "runc": {"images": {"berth/python:1": "/r/py"}}})).image_path(
        "berth/python:1") == "/r/py"
    with pytest.raises(ConfigError, match=r"^runc\.images: runtime runc runs each image from a root filesystem "
                                          r"directory, and none is named"):
        config_from_mapping({"node": {"runtime": "runc"}})
    assert config_from_mapping({"images": {"default": "berth/python:1"}}).node.runtime == "docker"
