"""A real Storm (Nimbus and a supervisor from Maven Central's jars) launching its workers through
berth's plugin, on the engine and on runc (issue 17 item 7): the topology acks; each worker's
container is the one ``berth explain --storm`` shows for its request; a worker killed from outside
reaches Storm's own exit callback with its code; the memory Storm is given is the cgroup's; berth
SIGKILLed mid-run loses no worker and no exit and reports none twice; Storm's supervisor
restarted mid-run keeps its workers; a hostile tenant's worker is refused what it tries.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench._storm import HOSTILE, WORDCOUNT
from bench._stormberth import IMAGE, BerthStorm
from berth import Node
from berth._linux import cgroup
from berth._storm.yaml import config_from_storm

from .conftest import BASE, SOCKET, poll_until, purge_runc

pytestmark = [pytest.mark.integration, pytest.mark.storm]

WAIT = 300.0
"""Storm's pace on two shared cores: a worker JVM limited to a third of a core starts in tens of seconds."""
LAUNCHED = re.compile(r"berth launched worker (\S+) of (\S+) on port (\d+) as (\S+): (\{.*\})")


@pytest.fixture(scope="module", params=["docker", "runc"])
def storm(request: pytest.FixtureRequest, zookeeper: Any, users: dict[str, Any],
          storm_image: str) -> Iterator[BerthStorm]:
    request.getfixturevalue("engine" if request.param == "docker" else "runc_ready")
    base = BASE / uuid.uuid4().hex[:10]
    base.mkdir(parents=True, mode=0o755)
    s = BerthStorm(runtime=request.param, base=base)
    try:
        s.start()
        yield s
    finally:
        s.purge()
        purge_runc(base / "state")


@pytest.fixture(scope="module")
def wordcount(storm: BerthStorm) -> dict[str, Any]:
    """berth-alice's word count in two workers, acking."""
    name = "wc-" + uuid.uuid4().hex[:6]
    storm.cluster.submit(WORDCOUNT, name, "2", user="berth-alice")
    info: dict[str, Any] = {}

    def acking() -> bool:
        now = storm.cluster.info(name)
        if now is None or len({w["port"] for w in now["workers"]}) != 2 or not now["acked"]:
            return False
        info.update(now)
        return True

    poll_until(acking, f"{name} acking in two workers", WAIT, every=3)
    return info


def running(storm: BerthStorm, topology: str) -> dict[str, dict[str, Any]]:
    """The topology's running workers, by id, as berth lists them (container, port, user)."""
    out = storm.berth_cli("ps", "--json")
    assert out.returncode == 0, out.stderr
    return {w["worker_id"]: w for w in json.loads(out.stdout) if w["topology_id"] == topology
            and w["state"] == "running"}


def heartbeating(storm: BerthStorm, wid: str) -> bool:
    """Whether the worker has written a heartbeat Storm's supervisor can read (LocalState's version marker)."""
    beats = storm.local_dir / "workers" / wid / "heartbeats"
    return beats.is_dir() and any(p.name.endswith(".version") for p in beats.iterdir())


def acks_grow(storm: BerthStorm, name: str) -> None:
    first = storm.cluster.acked(name)
    poll_until(lambda: storm.cluster.acked(name) > first, f"{name}'s acked count to grow", WAIT, every=3)


def launches(storm: BerthStorm) -> dict[str, dict[str, Any]]:
    """What the plugin logged for each launch: topology, port, user and berth's answer."""
    return {m.group(1): {"topology": m.group(2), "port": int(m.group(3)), "user": m.group(4),
                         **json.loads(m.group(5))} for m in LAUNCHED.finditer(storm.supervisor_log())}


def test_the_topology_acks_in_berths_containers_as_explain_storm_shows(storm: BerthStorm,
                                                                     wordcount: dict[str, Any]) -> None:
    topo = wordcount["id"]
    workers = running(storm, topo)
    assert len(workers) == 2 and {w["user"] for w in workers.values()} == {"berth-alice"}
    asked = launches(storm)
    for wid, w in workers.items():
        req = asked[wid]
        assert (req["topology"], req["port"], req["image"]) == (topo, w["port"], IMAGE)
        explain = storm.berth_cli("explain", "--storm", "--worker-id", wid, "--topology", topo, "--port",
                                  str(w["port"]), "--user", "berth-alice", "--cpu", str(req["cpu_percent"]),
                                  "--memory", str(req["memory_mb"]), "--", "java")
        assert explain.returncode == 0, explain.stderr
        line = storm_line(explain.stdout)
        got = container(storm, wid)
        assert got["mounts"] >= line["mounts"], line["mounts"] - got["mounts"]  # each of Storm's, as Storm's
        for key in ("user", "groups", "cgroup_parent", "workdir", "network", "read_only", "no_new_privileges",
                    "caps", "cpu_percent", "image"):
            assert got[key] == line[key], key
        assert got["memory_mb"] == req["memory_mb"]  # berth's limit: Storm's memMb, with no swap beyond it
        audit = storm.berth_cli("audit", wid)
        assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr
    acks_grow(storm, wordcount["name"])


def storm_line(text: str) -> dict[str, Any]:
    """The values on ``explain --storm``'s line (Storm's DockerManager tokens)."""
    tokens = shlex.split(text.strip().removeprefix("docker "))
    out: dict[str, Any] = {"mounts": set(), "groups": set(), "caps": set(), "read_only": False,
                           "no_new_privileges": False}
    it = iter(tokens)
    for tok in it:
        if tok == "-v":
            src, dst, *mode = next(it).split(":")
            out["mounts"].add((src, dst, mode == ["ro"]))
        elif tok == "--group-add":
            out["groups"].add(int(next(it)))
        elif tok == "--security-opt":
            out["no_new_privileges"] |= next(it) == "no-new-privileges"
        elif tok == "--read-only":
            out["read_only"] = True
        elif tok.startswith("--") and "=" in tok:
            key, value = tok[2:].split("=", 1)
            if key == "user":
                out["user"] = tuple(int(x) for x in value.split(":"))
            elif key == "cap-drop":
                out["caps"].add(value)
            elif key == "cpus":
                out["cpu_percent"] = round(float(value) * 100)
            else:
                out[{"cgroup-parent": "cgroup_parent", "net": "network"}.get(key, key)] = value
    out["image"] = tokens[-3]
    return out


def container(storm: BerthStorm, wid: str) -> dict[str, Any]:
    """The same values, from what the runtime was given: the engine's container or runc's bundle."""
    if storm.runtime == "docker":
        import docker

        data = docker.APIClient(base_url=SOCKET, version="auto").inspect_container(wid)
        host, conf = data["HostConfig"], data["Config"]
        return {"mounts": {(m["Source"], m["Destination"], not m["RW"]) for m in data["Mounts"]},
                "user": tuple(int(x) for x in conf["User"].split(":")), "groups": set(map(int, host["GroupAdd"])),
                "cgroup_parent": host["CgroupParent"], "workdir": conf["WorkingDir"], "network": host["NetworkMode"],
                "read_only": host["ReadonlyRootfs"], "caps": set(host["CapDrop"]),
                "no_new_privileges": "no-new-privileges" in (host["SecurityOpt"] or []),
                "cpu_percent": host["NanoCpus"] // 10_000_000, "memory_mb": host["Memory"] >> 20,
                "image": conf["Image"]}
    oci = json.loads((storm.base / "state" / "runc" / "workers" / wid / "bundle" / "config.json").read_text())
    proc, linux = oci["process"], oci["linux"]
    caps = proc["capabilities"]
    return {"mounts": {(m["source"], m["destination"], "ro" in m["options"]) for m in oci["mounts"]
                       if "bind" in m["options"] or "rbind" in m["options"]},
            "user": (proc["user"]["uid"], proc["user"]["gid"]), "groups": set(proc["user"]["additionalGids"]),
            "cgroup_parent": linux["cgroupsPath"].rsplit("/", 1)[0], "workdir": proc["cwd"],
            "network": "none" if any(n["type"] == "network" for n in linux["namespaces"]) else "host",
            "read_only": oci["root"]["readonly"], "caps": {"ALL"} if not any(caps.values()) else set(),
            "no_new_privileges": proc["noNewPrivileges"], "image": oci["annotations"]["berth.image"],
            "cpu_percent": linux["resources"]["cpu"]["quota"] // 1000,
            "memory_mb": linux["resources"]["memory"]["limit"] >> 20}


def kill_from_outside(storm: BerthStorm, wid: str) -> None:
    """SIGKILL the worker's main process as an OOM killer or an operator's kill -9 would."""
    pid = describe_pid(storm, wid)
    os.kill(pid, signal.SIGKILL)


def describe_pid(storm: BerthStorm, wid: str) -> int:
    """The worker's main process on the host, as berth's runtime knows it."""
    data = yaml.safe_load(storm.storm_yaml.read_text())
    config = config_from_storm(data, env={"STORM_HOME": str(storm.instance_dir / "home")})
    config = config.model_copy(update={"node": config.node.model_copy(update={"docker_host": SOCKET})})
    with Node(config) as node:
        pid = node.describe(wid).pid
    assert isinstance(pid, int) and pid > 1
    return pid


def exit_lines(storm: BerthStorm, wid: str) -> list[str]:
    return re.findall(rf"Worker Process {re.escape(wid)} exited with code: (-?\d+)", storm.supervisor_log())


def test_a_worker_killed_from_outside_reaches_storms_callback_with_its_code(storm: BerthStorm,
                                                                         wordcount: dict[str, Any]) -> None:
    topo = wordcount["id"]
    wid, w = sorted(running(storm, topo).items())[0]
    kill_from_outside(storm, wid)
    poll_until(lambda: exit_lines(storm, wid) == ["137"], f"Storm's callback for {wid}", WAIT, every=1)
    # Storm's slot saw the exit (not only a missing heartbeat) and launched again through berth
    poll_until(lambda: any(v["port"] == w["port"] and k != wid for k, v in running(storm, topo).items()),
               "a new worker on the same port", WAIT, every=2)
    acks_grow(storm, wordcount["name"])
    assert exit_lines(storm, wid) == ["137"]


def test_the_memory_storm_is_given_is_the_cgroups(storm: BerthStorm, wordcount: dict[str, Any]) -> None:
    wid = sorted(running(storm, wordcount["id"]))[0]
    path = cgroup.memory_file(describe_pid(storm, wid))
    with storm.client() as c:
        before = cgroup.read_int(path)
        reported = c.get(f"/storm/v1/workers/{wid}/memory").json()["bytes"]
        after = cgroup.read_int(path)
    assert min(before, after) <= reported <= max(before, after)


def test_berth_sigkilled_mid_run_loses_no_worker_and_no_exit(storm: BerthStorm, wordcount: dict[str, Any]) -> None:
    topo = wordcount["id"]
    before = running(storm, topo)
    (victim, _), (keeper, kept) = sorted(before.items())
    storm.stop_berth(signal.SIGKILL)
    kill_from_outside_while_berth_is_down(storm, victim)
    storm.start_berth()
    poll_until(lambda: exit_lines(storm, victim) == ["137"], f"Storm's callback for {victim}", WAIT, every=1)
    with storm.client() as c:
        poll_until(lambda: c.get("/healthz").json()["exits"]["pending"] == 0, "the exit acknowledged", WAIT)
    storm.stop_berth(signal.SIGKILL)  # and once more: an acknowledged exit is never handed out again
    storm.start_berth()
    acks_grow(storm, wordcount["name"])
    assert exit_lines(storm, victim) == ["137"]
    now = running(storm, topo)
    assert now[keeper]["started_at"] == kept["started_at"]  # adopted, never relaunched


def kill_from_outside_while_berth_is_down(storm: BerthStorm, wid: str) -> None:
    pid = describe_pid(storm, wid)  # from the runtime's own state: berth is not running
    os.kill(pid, signal.SIGKILL)  # the engine, or berth-shim, sees it end and keeps its status
    poll_until(lambda: not Path(f"/proc/{pid}").exists(), f"{wid} to end")


def test_storms_supervisor_restarted_mid_run_keeps_its_workers(storm: BerthStorm, wordcount: dict[str, Any]) -> None:
    topo = wordcount["id"]
    # Both workers must be up as Storm counts it before the restart: a restarted supervisor kills a
    # worker that has not written its first heartbeat yet (Storm's Slot, HB_NULL), and the previous
    # test's relaunch may still be starting its JVM on a slow machine.
    poll_until(lambda: len(running(storm, topo)) == 2 and all(heartbeating(storm, w) for w in running(storm, topo)),
               "both workers running in berth's containers and heartbeating", WAIT, every=1)
    before = {w: v["started_at"] for w, v in running(storm, topo).items()}
    assert len(before) == 2
    storm.cluster.daemon("kill", "supervisor-1")
    storm.cluster.daemon("start", "supervisor-1")
    acks_grow(storm, wordcount["name"])
    assert {w: v["started_at"] for w, v in running(storm, topo).items()} == before
    assert len(re.findall(r"Starting in state running", storm.supervisor_log())) >= len(before)
    # The restarted supervisor holds no callback for them (nor would Storm's own managers): an exit
    # is logged and acknowledged once, and Storm relaunches when the heartbeats stop.
    victim = sorted(before)[0]
    kill_from_outside(storm, victim)
    said = re.compile(rf"berth: worker {re.escape(victim)} \(container \w+\) ended, killed by signal 9 \(exit code "
                      r"137\); this supervisor holds no callback for it")
    poll_until(lambda: len(said.findall(storm.supervisor_log())) == 1, f"the plugin's line for {victim}", WAIT)
    poll_until(lambda: victim not in running(storm, topo) and len(running(storm, topo)) == 2,
               "Storm to relaunch the slot", WAIT, every=2)
    acks_grow(storm, wordcount["name"])
    assert len(said.findall(storm.supervisor_log())) == 1 and exit_lines(storm, victim) == []


def test_a_hostile_tenants_worker_is_refused_what_it_tries(storm: BerthStorm, wordcount: dict[str, Any]) -> None:
    """berth-bob's worker, beside berth-alice's word count: berth's socket, alice's worker dirs and
    code, Storm's supervisor state and alice's processes are all out of its reach."""
    alice_topo = wordcount["id"]
    alice = sorted(running(storm, alice_topo))[0]
    local = storm.local_dir
    code = local / "supervisor" / "stormdist" / alice_topo
    alice_pid = str(describe_pid(storm, alice))
    name = "hostile-" + uuid.uuid4().hex[:6]
    storm.cluster.submit(HOSTILE, name, user="berth-bob", conf={
        "berth.hostile.socket": str(storm.socket),
        "berth.hostile.read": ",".join(map(str, (code / "stormjar.jar", code / "stormconf.ser",
                                                 local / "workers" / alice / "heartbeats"))),
        "berth.hostile.write": ",".join(map(str, (local / "workers" / alice, code / "shared_by_topology", code))),
        "berth.hostile.pids": alice_pid,
    })
    info = storm.cluster.info(name)
    assert info is not None and info["owner"] == "berth-bob"
    reports: list[Path] = []

    def reported() -> bool:
        reports[:] = list((storm.log_dir / "workers-artifacts").glob(f"{info['id']}/*/hostile-report.json"))
        return bool(reports)

    poll_until(reported, "the hostile worker's report", WAIT, every=2)
    results = json.loads(reports[0].read_text())
    # A signal to a process of its own container is its own business (alice's must be out of reach);
    # Storm hands every worker Nimbus's ZooKeeper identity in its own conf, which no isolation can
    # refuse (docs/storm.md, "Storm leaks its ZooKeeper secret to every worker").
    storms_leak = ("secret in own conf", "zookeeper read")
    allowed = [r for r in results if r["ok"] and r["probe"] not in storms_leak
               and (not r["probe"].startswith("signal") or r["target"] == alice_pid)]
    assert allowed == [], allowed
    probed = {(r["probe"], r["target"]) for r in results}
    assert {("connect", str(storm.socket)), ("read", str(code / "stormjar.jar")), ("signal 0", alice_pid),
            ("list", str(local / "supervisor" / "localstate")), ("list", str(code))} <= probed
    storm.cluster.kill(name)
    acks_grow(storm, wordcount["name"])  # alice's word count went on
