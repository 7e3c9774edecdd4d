"""Issue 17 item 2: a Storm-launched worker's directories, and the storm.yaml keys of berth's plugin.

Storm's supervisor makes the worker's dirs before it asks the plugin to launch; berth gives them to
the worker as Storm's setuid launcher's ``worker`` and ``artifacts-dir`` commands do
(``setup_dir_permissions`` in worker-launcher.c, v2.8.4), never following a link, and removes the
worker's tree at cleanup (Storm's supervisor, as its own user, cannot remove what the worker made).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from berth import LaunchError, Node
from berth._core.spec import WorkerSpec
from berth._exceptions import ConfigError
from berth._node import stormdirs
from berth._node.stormtrees import launcher_mode
from berth._runtimes.fake.runtime import FakeRuntime
from berth._storm.yaml import BERTH_PLUGIN, config_from_storm

from ._stormfake import STORM_GID, STORM_UID, TOPO, mode, owner, storm_node, storm_setup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns directories to made-up uids")


def spec(wid: str = "9c3e-41ab", user: str = "alice", port: int = 6700) -> WorkerSpec:
    return WorkerSpec(worker_id=wid, topology_id=TOPO, port=port, user=user, command=("java", "-server"))


@pytest.fixture
def node(base: Path) -> Iterator[Node]:
    n = storm_node(base, FakeRuntime())
    yield n
    n.close()


@pytest.mark.parametrize(("before", "setgid", "after"), [
    (stat.S_IFDIR | 0o755, True, 0o2770),  # Storm's dir: u keeps r-x, gets w; g rw + x + setgid
    (stat.S_IFDIR | 0o755, False, 0o770),  # tmp: no setgid
    (stat.S_IFDIR | 0o2700, False, 0o770),  # and a setgid there is taken away
    (stat.S_IFREG | 0o644, True, 0o660),   # a file: u r + w, g rw, no x
    (stat.S_IFREG | 0o755, True, 0o760),   # an executable keeps its user x only
    (stat.S_IFREG | 0o000, True, 0o260),
])
def test_the_modes_are_those_of_storms_setup_permissions(before: int, setgid: bool, after: int) -> None:
    assert launcher_mode(before, setgid) == after


def test_a_launch_gives_storms_dirs_to_the_worker_as_the_launcher_does(node: Node, base: Path) -> None:
    root = storm_setup(node.config, "9c3e-41ab")
    (root / "heartbeats" / "old").write_text("x")
    handle = node.launch(spec())
    art = Path(node.config.artifacts_root) / TOPO / "6700"
    shared = Path(node.config.node.local_dir) / "supervisor" / "stormdist" / TOPO / "shared_by_topology"
    for d in (root, root / "pids", root / "heartbeats", art, shared):
        assert (owner(d), mode(d)) == ((3101, STORM_GID), 0o2770), d
    assert (owner(root / "tmp"), mode(root / "tmp")) == ((3101, STORM_GID), 0o770)
    assert (owner(root / "heartbeats" / "old"), mode(root / "heartbeats" / "old")) == ((3101, STORM_GID), 0o660)
    assert (owner(art / "worker.yaml"), mode(art / "worker.yaml")) == ((3101, STORM_GID), 0o660)
    # the link is left as it is (lchown would not follow it either); the user file stays Storm's
    assert owner(root / "artifacts") == (STORM_UID, STORM_GID) and os.readlink(root / "artifacts") == str(art)
    ufile = Path(handle.plan.layout.user_file)
    assert (owner(ufile), ufile.read_text()) == ((STORM_UID, STORM_GID), "alice")
    script = Path(handle.plan.script_path)
    assert (owner(script), mode(script)) == ((0, 3101), 0o550)
    assert Path(handle.plan.cid_file).read_text() == handle.container_id + "\n"


def test_the_topologys_code_is_its_users_and_storms_alone(node: Node) -> None:
    """Storm's launcher (``code-dir``) gives ``stormdist/<topology>`` to the topology's user and
    Storm's group, with nothing for others: without it (run-as-user off), Storm leaves the jar and
    the serialized conf (with the topology's ZooKeeper digest) readable by every other tenant's
    workers, which all see the supervisor dir."""
    storm_setup(node.config, "w1")
    code = Path(node.config.node.local_dir) / "supervisor" / "stormdist" / TOPO
    node.launch(spec("w1"))
    assert (owner(code), mode(code)) == ((3101, STORM_GID), 0o2570)
    assert (owner(code / "stormjar.jar"), mode(code / "stormjar.jar")) == ((3101, STORM_GID), 0o460)
    assert (owner(code / "resources"), mode(code / "resources")) == ((3101, STORM_GID), 0o2570)
    assert mode(code / "shared_by_topology") == 0o2770  # the one dir of it the topology writes
    (code / "stormconf.ser").write_text("a blob update, as Storm writes it")
    os.chown(code / "stormconf.ser", STORM_UID, STORM_GID)
    storm_setup(node.config, "w2", port=6701)
    node.launch(spec("w2", port=6701))  # every launch: what Storm added since is given too
    assert (owner(code / "stormconf.ser"), mode(code / "stormconf.ser")) == ((3101, STORM_GID), 0o460)


def test_without_storms_dirs_nothing_is_launched_and_nothing_made(node: Node, base: Path) -> None:
    with pytest.raises(LaunchError) as err:
        node.launch(spec())
    assert "does not exist: Storm's supervisor makes it" in err.value.reason
    assert node.ps() == [] and not (base / "local" / "workers").exists()


def test_a_worker_root_that_is_a_link_is_not_followed(node: Node, base: Path) -> None:
    root = storm_setup(node.config, "9c3e-41ab")
    elsewhere = base / "elsewhere"
    root.rename(elsewhere)
    os.symlink(elsewhere, root)
    with pytest.raises(LaunchError) as err:
        node.launch(spec())
    assert "not a plain directory" in err.value.reason
    assert owner(elsewhere) == (STORM_UID, STORM_GID) and node.ps() == []


def test_another_users_topology_dirs_are_not_taken(node: Node) -> None:
    storm_setup(node.config, "w-bob")
    art = Path(node.config.artifacts_root) / TOPO / "6700"
    os.chown(art, 3102, STORM_GID)  # bob's worker ran on this port of this topology
    with pytest.raises(LaunchError) as err:
        node.launch(spec("w-bob"))
    assert "belongs to uid 3102" in err.value.reason and owner(art) == (3102, STORM_GID)


@pytest.mark.parametrize(("user", "why"), [("mallory", "Storm's launcher group"),
                                           ("storm", "the user Storm's supervisor runs as")])
def test_a_user_in_storms_group_or_storms_own_user_is_refused(node: Node, user: str, why: str) -> None:
    root = storm_setup(node.config, "w1")
    with pytest.raises(LaunchError) as err:
        node.launch(spec("w1", user=user))
    assert why in err.value.reason and owner(root) == (STORM_UID, STORM_GID)


def test_a_fifo_or_a_hard_link_in_the_worker_dirs_is_left_alone(node: Node, base: Path) -> None:
    """Storm's launcher stops at a fifo (a worker could leave one in its topology's artifacts dir
    and no later worker of that port would start) and gives a hard link away (a file from
    elsewhere that the worker could write, now its own): berth leaves both as they are."""
    root = storm_setup(node.config, "w1")
    os.mkfifo(root / "pids" / "fifo")
    elsewhere = base / "elsewhere"
    elsewhere.write_text("x")
    os.link(elsewhere, Path(node.config.artifacts_root) / TOPO / "6700" / "hard")
    node.launch(spec("w1"))
    assert owner(root / "pids" / "fifo") == (0, 0) and owner(elsewhere) == (0, 0)
    assert owner(root / "pids") == (3101, STORM_GID)


def test_the_walk_has_a_bound_on_entries_not_on_depth(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    root = storm_setup(node.config, "w1")
    deep = root / "tmp"
    for _ in range(100):  # one descriptor at a time, whatever the depth
        deep = deep / "d"
    deep.mkdir(parents=True)
    monkeypatch.setattr(stormdirs, "MAX_ENTRIES", 6)
    with pytest.raises(LaunchError) as err:
        node.launch(spec("w1"))
    assert "more than 6 entries" in err.value.reason
    monkeypatch.setattr(stormdirs, "MAX_ENTRIES", 65536)
    node.launch(spec("w1"))
    assert owner(deep) == (3101, STORM_GID)


def test_a_link_to_a_file_outside_is_left_alone(node: Node, base: Path) -> None:
    root = storm_setup(node.config, "w1")
    secret = base / "secret"
    secret.write_text("x")
    os.chmod(secret, 0o600)
    os.symlink(secret, root / "pids" / "link")
    node.launch(spec("w1"))
    assert (owner(secret), mode(secret)) == ((0, 0), 0o600)


def test_cleanup_removes_the_whole_worker_tree_but_not_storms_user_file(node: Node) -> None:
    root = storm_setup(node.config, "w1")
    handle = node.launch(spec("w1"))
    sub = root / "heartbeats" / "made-by-worker"
    sub.mkdir(mode=0o700)
    os.chown(sub, 3101, 3101)
    (sub / "f").write_text("x")
    node.cleanup("w1")
    assert not root.exists() and node.ps() == []
    assert Path(handle.plan.layout.user_file).read_text() == "alice"


def test_storm_yaml_carries_berths_keys(tmp_path: Path) -> None:
    data = yaml.safe_load(f"""
storm.home: {tmp_path}
storm.local.dir: /var/storm
storm.log.dir: /var/log/storm
storm.resource.isolation.plugin.enable: true
storm.resource.isolation.plugin: {BERTH_PLUGIN}
storm.oci.image: berth/storm:latest
storm.oci.allowed.images: [berth/storm:latest]
berth.runtime: runc
berth.runc.image.root: /var/lib/berth/rootfs
berth.state.dir: /var/lib/berth/storm-state
berth.api.socket: /run/berth/storm.sock
berth.api.socket.group: storm
berth.container.max.memory.mb: 2048
berth.storm.supervisor.user: storm
berth.storm.launcher.group: storm
""")
    c = config_from_storm(data)
    assert (c.node.runtime, c.node.state_dir, c.api.socket, c.api.socket_group) == \
        ("runc", "/var/lib/berth/storm-state", "/run/berth/storm.sock", "storm")
    assert c.container.max_memory_mb == 2048 and c.storm is not None
    assert (c.storm.plugin, c.storm.supervisor_user, c.storm.launcher_group) == (BERTH_PLUGIN, "storm", "storm")
    assert c.storm.notes == () and c.storm.unused_keys == ()  # berth's plugin is a container manager
    for key, value, said in (("berth.runtime", "podman", "must be docker or runc"),
                             ("berth.storm.supervisor.user", "a b", "is not a user or group name"),
                             ("berth.container.max.memory.mb", 2, "greater than or equal to 6"),
                             ("berth.storm.supervisor.usr", "storm", "did you mean berth.storm.supervisor.user")):
        with pytest.raises(ConfigError) as err:
            config_from_storm({**data, key: value})
        assert err.value.field == key and said in err.value.reason
    assert config_from_storm({k: v for k, v in data.items() if k != "berth.runtime"}).node.runtime == "docker"
    named = config_from_storm({**data, "storm.local.hostname": "localhost", "berth.node.name": "sup-1"})
    assert named.node.name == "sup-1"  # several supervisors of one engine all call themselves localhost


def test_a_hard_link_to_anothers_file_is_never_given_to_the_worker(node: Node, base: Path) -> None:
    """A worker writes its topology's shared dir; with fs.protected_hardlinks off it could link a
    file of root's there, and a walk that chowns whatever it finds would hand that file over."""
    storm_setup(node.config, "w1")
    shared = Path(node.config.node.local_dir) / "supervisor" / "stormdist" / TOPO / "shared_by_topology"
    secret = base / "shadow"
    secret.write_text("root's")
    os.chmod(secret, 0o600)
    os.link(secret, shared / "planted")
    node.launch(spec("w1"))  # the code-dir and artifacts-dir walks over the shared dir leave it alone
    assert (owner(secret), mode(secret)) == ((0, 0), 0o600)


def test_storms_own_state_is_closed_to_workers(node: Node) -> None:
    """Every worker sees the supervisor dir (read-only, as DockerManager mounts it) for its own
    topology's code; Storm's own state beside it (localstate: every slot's assignment, owner and
    worker id; isupervisor; tmp: blobs being downloaded) is Storm's supervisor's alone."""
    storm_setup(node.config, "w1")
    sup = Path(node.config.node.local_dir) / "supervisor"
    for name in ("localstate", "isupervisor", "tmp"):
        (sup / name).mkdir(mode=0o755)
        os.chown(sup / name, STORM_UID, STORM_GID)
    (sup / "localstate" / "123.version").write_text("assignments")
    node.launch(spec("w1"))
    for name in ("localstate", "isupervisor", "tmp"):
        assert (owner(sup / name), mode(sup / name)) == ((STORM_UID, STORM_GID), 0o750), name
    assert mode(sup / "stormdist") == 0o755  # the way to the topology's own code stays open
