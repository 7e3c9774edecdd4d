"""A real Storm cluster with Storm's default isolation (no berth): the ground the plugin stands on.

``scripts/storm`` starts Storm's own Nimbus and supervisor from the jars it fetched from Maven
Central; the word count (``storm/topologies``) runs in two workers, its tuples are acked, and a kill
leaves no worker process and no worker dir behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from bench._storm import HOSTILE, SCRIPT, WORDCOUNT, StormCluster, pids_with_arg, worker_pids

from .conftest import poll_until

pytestmark = [pytest.mark.integration, pytest.mark.storm]

WAIT = 240.0
"""Storm's own pace: a worker JVM starts in seconds, stats reach Nimbus every 5 s, on 2 shared cores."""


def test_word_count_acks_in_two_workers_and_a_kill_leaves_nothing(storm_cluster: StormCluster) -> None:
    c = storm_cluster
    name = "wc-" + uuid.uuid4().hex[:8]
    c.submit(WORDCOUNT, name, "2")
    info = c.info(name)
    assert info is not None and info["owner"] == "storm" and info["status"] == "ACTIVE"
    topo = info["id"]

    def two_workers() -> bool:
        now = c.info(name)
        return now is not None and len({w["port"] for w in now["workers"]}) == 2

    poll_until(two_workers, "the word count scheduled on two slots", WAIT, every=2)
    poll_until(lambda: c.acked(name) > 0, "acked tuples", WAIT, every=2)
    first = c.acked(name)
    poll_until(lambda: c.acked(name) > first, "the acked count to grow", WAIT, every=2)
    assert len(worker_pids(topo)) == 4  # per worker, Storm's LogWriter JVM and the worker JVM

    local = Path(c.environment()["STORM_SUPERVISOR_LOCAL_DIRS"].split()[0])
    assert len(list((local / "workers").iterdir())) == 2
    c.kill(name)
    poll_until(lambda: c.info(name) is None, "Nimbus to forget the topology", WAIT, every=2)
    poll_until(lambda: worker_pids(topo) == [], "no worker process of the topology", WAIT, every=1)
    poll_until(lambda: list((local / "workers").iterdir()) == [], "no worker dir left", WAIT, every=1)


def _report(c: StormCluster, topology_id: str) -> list[dict[str, object]]:
    logs = Path(c.environment()["STORM_SUPERVISOR_LOG_DIRS"].split()[0])
    found: list[dict[str, object]] = []

    def written() -> bool:
        for f in logs.glob(f"workers-artifacts/{topology_id}/*/hostile-report.json"):
            found.extend(json.loads(f.read_text()))
            return True
        return False

    poll_until(written, "the hostile worker's report", WAIT, every=1)
    return found


def test_without_isolation_a_hostile_worker_reaches_everything(storm_cluster: StormCluster, base: Path) -> None:
    """The baseline the plugin's test turns around: under Storm's default isolation (every worker
    runs as the supervisor's user) each probe of the hostile topology succeeds, so a refusal under
    berth means something. It also shows Storm's own leak: the cluster's ZooKeeper payload in the
    topology's conf, and with it another topology's worker-token key."""
    c = storm_cluster
    victim, hostile = "victim-" + uuid.uuid4().hex[:6], "hostile-" + uuid.uuid4().hex[:6]
    sock_dir = base / "api"  # where the storm user can reach it (pytest's tmp_path is root's alone)
    sock_dir.mkdir(mode=0o755)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_dir / "api.sock"))
    os.chmod(sock_dir / "api.sock", 0o777)
    server.listen(8)
    supervisor_pid = c.pid("supervisor-1")
    assert supervisor_pid is not None
    try:
        c.submit(WORDCOUNT, victim, "1", "1")
        poll_until(lambda: c.acked(victim) > 0, "the victim to ack", WAIT, every=2)
        c.submit(HOSTILE, hostile, user="berth-alice",
                 conf={"berth.hostile.socket": str(sock_dir / "api.sock"), "berth.hostile.pids": str(supervisor_pid)})
        info = c.info(hostile)
        assert info is not None and info["owner"] == "berth-alice"
        report = _report(c, info["id"])
    finally:
        server.close()
        for name in (victim, hostile):
            c.kill(name)
    ok = {(str(r["probe"]), str(r["target"])) for r in report if r["ok"]}
    probes = {p for p, _ in ok}
    assert ("connect", str(sock_dir / "api.sock")) in ok
    assert {"list", "read", "write", "secret in own conf", "zookeeper read"} <= probes
    assert any(p == "list" and "/workers/" in t for p, t in ok)  # another worker's dir
    assert any(p == "write" and "/workers/" in t for p, t in ok)
    assert any(p == "read" and t.endswith("/stormconf.ser") and victim in t for p, t in ok)
    assert any(p == "read" and "/supervisor/localstate/" in t for p, t in ok)
    assert ("signal 0", str(supervisor_pid)) in ok
    zk = next(r for r in report if r["probe"] == "zookeeper read")
    assert "worker-token key" in str(zk["detail"])


def test_two_users_own_their_topologies_and_storm_passes_the_user_on(storm_cluster: StormCluster) -> None:
    """SASL DIGEST-MD5 on Thrift: the submitter's name is the owner, and the supervisor records it
    as the worker's user (workers-users/<id>), which a plugin and the worker-launcher are given."""
    c = storm_cluster
    names = {"berth-alice": "alice-" + uuid.uuid4().hex[:6], "berth-bob": "bob-" + uuid.uuid4().hex[:6]}
    env = c.environment()
    local, logs = Path(env["STORM_SUPERVISOR_LOCAL_DIRS"].split()[0]), Path(env["STORM_SUPERVISOR_LOG_DIRS"].split()[0])
    try:
        for user, name in names.items():
            c.submit(WORDCOUNT, name, "1", "1", user=user)
        for user, name in names.items():
            info = c.info(name)
            assert info is not None and info["owner"] == user
        poll_until(lambda: all(c.acked(n) > 0 for n in names.values()), "both topologies to ack", WAIT, every=2)
        for user, name in names.items():
            info = c.info(name)
            assert info is not None
            [slot] = info["workers"]  # where it runs now (Nimbus may have moved it on a loaded machine)
            meta = logs / "workers-artifacts" / info["id"] / str(slot["port"]) / "worker.yaml"  # Container.setup's
            worker_id = yaml.safe_load(meta.read_text())["worker-id"]
            assert (local / "workers-users" / worker_id).read_text().strip() == user
    finally:
        for name in names.values():
            c.kill(name)
    for name in names.values():
        poll_until(lambda n=name: c.info(n) is None, f"{name} gone", WAIT, every=2)  # type: ignore[misc]


def _as_storm(script: str) -> subprocess.CompletedProcess[str]:
    """A shell as the storm user (what every worker is under Storm's default isolation)."""
    return subprocess.run(["setpriv", "--reuid=storm", "--regid=storm", "--init-groups", "--", "sh", "-c", script],
                          capture_output=True, text=True)


def test_the_storm_user_cannot_lead_a_restart_to_chown_or_write_elsewhere(zookeeper: object, users: object,
                                                                          base: Path) -> None:
    """scripts/storm runs as root and chowns the storm user's dirs at each start, and appends to
    each daemon's stdout file: none of those may be a path the storm user (or a worker running as
    it) can swap for a link, or root would chown or append to the link's target."""
    target = base / "target"
    target.mkdir(mode=0o755)
    (target / "file").write_text("root's\n")
    c = StormCluster()
    try:
        c.start()
        env = c.environment()
        logs = Path(env["STORM_LOG_DIR"])
        run = Path(env.get("STORM_RUN_DIR", str(logs.parent / "run")))
        for d in (logs, run):  # whatever the layout: plant a link for every entry root touches
            _as_storm(f"cd {d} && for e in *; do mv -f \"$e\" \"$e.old\" && ln -s {target} \"$e\"; done; "
                      f"for e in *.out; do rm -f \"$e\" && ln -s {target}/file \"$e\"; done")
        c.stop()
        c.run("start", check=False)
    finally:
        c.run("purge", check=False)
    assert target.stat().st_uid == 0 and target.stat().st_mode & 0o777 == 0o755
    assert (target / "file").stat().st_uid == 0
    assert (target / "file").read_text() == "root's\n"


def _daemons_of(instance: str) -> list[int]:
    return pids_with_arg(f"-Dberth.storm.daemon={instance}/", prefix=True)


def test_two_starts_at_once_make_one_cluster_and_a_cut_settings_file_still_stops(zookeeper: object,
                                                                                  users: object) -> None:
    c = StormCluster()
    try:
        starts = [subprocess.Popen([str(SCRIPT), "start"], env=c._env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for p in starts:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-2000:]
        assert len(_daemons_of(c.instance)) == 2  # one Nimbus, one supervisor
        settings = Path(c.environment()["STORM_HOME"]).parent / "settings"
        settings.write_text("")  # a full disk cut it short
        c.stop()
        assert _daemons_of(c.instance) == []
    finally:
        c.run("purge", check=False)


def test_hooks_reach_the_supervisors_only_and_stay_until_removed(zookeeper: object, users: object,
                                                                  base: Path) -> None:
    """A plugin's lines go into the supervisors' storm.yaml (over ours) and not into Nimbus's, which
    would load the plugin class to validate them; its jars go into extlib-daemon/. A later start
    without the options keeps them; an empty value removes them."""
    extra = base / "plugin.yaml"
    extra.write_text("berth.test.key: from the hook\nsupervisor.worker.shutdown.sleep.secs: 1\n")
    jars = base / "jars"
    jars.mkdir()
    (jars / "plugin.jar").write_bytes(Path(StormCluster().jar).read_bytes())
    c = StormCluster()
    try:
        c.start(supervisor_yaml=extra, extlib_daemon=jars)
        env = c.environment()
        sup = yaml.safe_load(Path(env["STORM_SUPERVISOR_CONFS"]).read_text())
        assert sup["berth.test.key"] == "from the hook" and sup["supervisor.worker.shutdown.sleep.secs"] == 1
        assert sup["storm.zookeeper.root"] == env["STORM_ZK_ROOT"]  # ours are still there
        assert "berth.test.key" not in yaml.safe_load(Path(env["STORM_NIMBUS_CONF"]).read_text())
        assert "berth.test.key" not in Path(env["STORM_CONF"]).read_text()  # nor the workers'
        assert [p.name for p in Path(env["STORM_HOME"], "extlib-daemon").iterdir()] == ["plugin.jar"]
        log = Path(env["STORM_SUPERVISOR_LOG_DIRS"], "supervisor.log").read_text()
        assert "berth.test.key=from the hook" in log  # what the supervisor itself read
        c.stop()
        c.start()
        assert "berth.test.key" in Path(env["STORM_SUPERVISOR_CONFS"]).read_text()
        c.stop()
        c.run("start", "--supervisor-yaml", "", "--extlib-daemon", "")
        assert "berth.test.key" not in Path(env["STORM_SUPERVISOR_CONFS"]).read_text()
        assert list(Path(env["STORM_HOME"], "extlib-daemon").iterdir()) == []
    finally:
        c.run("purge", check=False)
