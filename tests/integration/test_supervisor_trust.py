"""Issue 10 on the real engine: what a restart keeps, an empty file, two supervisors, SIGKILL in a
crash loop, and what `serve`, `supervise` and `ps` tell the operator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth import Node, NodeConfig, Supervisor
from berth._core.config import config_from_mapping

from .conftest import ROOT, config_toml, poll_until, purge
from .test_supervisor import FOREVER, Watch, fast, worker, write

pytestmark = pytest.mark.integration


class Berth:
    """A `berth serve` or `berth supervise` child, and a client on its socket."""

    def __init__(self, cfg: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(cfg), *args], cwd=ROOT,
                                     stderr=subprocess.PIPE, text=True)

    def client(self, sock: Path) -> httpx.Client:
        def bound() -> bool:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            return sock.exists()

        poll_until(bound, "the API socket", timeout=60)
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://berth", timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=120)
        return err


@pytest.fixture
def cfg(config: NodeConfig, base: Path) -> Iterator[tuple[NodeConfig, Path]]:
    config = fast(config)
    path = base / "berth.toml"
    path.write_text(config_toml(config))
    yield config, path


def containers(config: NodeConfig) -> dict[str, str]:
    return {w.worker_id: w.container_id for w in Node(config).ps() if w.running}


def events(config: NodeConfig) -> list[dict[str, Any]]:
    p = Path(config.state_dir, "events.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def spec(wid: str, port: int, script: str = FOREVER) -> dict[str, Any]:
    return worker(wid, port, script)


def test_serve_keeps_api_assignments_across_a_restart(cfg: tuple[NodeConfig, Path]) -> None:
    """Item 1 (and 14: where it listens, the socket removed on exit)."""
    config, path = cfg
    sock = Path(config.api_socket)
    first = Berth(path, "serve")
    with first.client(sock) as c:
        r = c.put("/assignments", json={"workers": [spec("p0", 6900), spec("p1", 6901)], "version": "v1"})
        assert r.status_code == 200, r.text
        poll_until(lambda: [w["state"] for w in c.get("/workers").json()] == ["running", "running"], "both running")
    before = containers(config)
    err = first.stop()
    assert f"berth: API listening on unix:{sock}" in err
    assert not sock.exists()  # removed on exit
    assert containers(config) == before  # left running

    second = Berth(path, "serve", "--drain")
    try:
        with second.client(sock) as c:
            poll_until(lambda: c.get("/healthz").json().get("last_pass_age_s") is not None, "a reconcile pass")
            assert c.get("/assignments").json()["version"] == "v1"
            assert [(w["worker_id"], w["state"]) for w in c.get("/workers").json()] == [("p0", "running"),
                                                                                       ("p1", "running")]
        assert containers(config) == before  # adopted: not stopped, not removed, not relaunched
        assert not any(e["to"] in ("stopping", "stopped") for e in events(config))
    finally:
        err = second.stop()
    assert "draining: 2/2 stopped" in err and containers(config) == {}


def test_serve_keeps_the_process_umask_once_its_socket_is_bound(cfg: tuple[NodeConfig, Path]) -> None:
    """The socket is born owner-only (a strict umask while it is bound); everything berth makes
    afterwards (worker roots, runc mount points, state files) must not inherit that umask."""
    config, path = cfg
    mine = os.umask(0o022)
    os.umask(mine)
    server = Berth(path, "serve")
    try:
        with server.client(Path(config.api_socket)) as c:
            assert c.get("/healthz").status_code in (200, 503)
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        umask = next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:"))
        assert int(umask, 8) == mine
    finally:
        server.stop()


def test_an_empty_assignments_file_changes_nothing(config: NodeConfig, base: Path) -> None:
    """Item 2: `: > assign.yaml` keeps the workers; `workers: []` drains."""
    path = base / "assign.yaml"
    write(path, [spec("e0", 6910), spec("e1", 6911)])
    sup = Supervisor(Node(fast(config)), assignments_path=str(path))
    watch = Watch(sup)
    sup.start()
    try:
        watch.until(lambda: watch.states() == {"e0": "running", "e1": "running"}, "both running")
        before = containers(config)
        path.write_text("")  # what `: > assign.yaml` leaves, before (or instead of) the new content
        sup.poke()
        watch.until(lambda: any("empty document" in str(x.get("reason")) for x in watch.lines), "the rejection")
        for _ in range(3):  # three more passes: had the empty file emptied the desired state, stops were under way
            want = watch.passes + 1
            sup.poke()
            watch.until(lambda: watch.passes >= want, "a pass")  # noqa: B023 - used at once
        assert containers(config) == before and sorted(sup.desired()) == ["e0", "e1"]
        assert not any(x["to"] in ("stopping", "stopped") for x in watch.lines)
        assert [r.field for r in sup.rejections()] == ["workers"]
        write(path, [])
        sup.poke()
        watch.until(lambda: watch.states() == {}, "a drain by workers: []")
        assert containers(config) == {}
    finally:
        sup.stop(drain=True)


def test_a_second_supervisor_refuses_to_start(cfg: tuple[NodeConfig, Path], base: Path) -> None:
    """Item 3: the same config (the first's socket untouched), then the same node name elsewhere."""
    config, path = cfg
    sock = Path(config.api_socket)
    first = Berth(path, "serve", "--drain")
    try:
        with first.client(sock) as c:
            assert c.put("/assignments", json={"workers": [spec("l0", 6920)]}).status_code == 200
            poll_until(lambda: [w["state"] for w in c.get("/workers").json()] == ["running"], "l0 running")
            again = subprocess.run([sys.executable, "-m", "berth", "--config", str(path), "serve"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=120)
            assert again.returncode == 125
            assert f"another supervisor holds {config.state_dir}/supervisor.lock (pid {first.proc.pid}" in again.stderr
            assert c.get("/healthz").json()["status"] == "ok"  # the first's socket still answers
            other = base / "elsewhere"
            other_cfg = config_from_mapping({**config.model_dump(), "node": {
                **config.node.model_dump(), "local_dir": str(other / "local"), "state_dir": str(other / "state")}})
            (base / "other.toml").write_text(config_toml(other_cfg))
            same_name = subprocess.run([sys.executable, "-m", "berth", "--config", str(base / "other.toml"),
                                        "serve", "--drain"], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert same_name.returncode == 125
            assert f"served by another supervisor (state dir {config.state_dir}; its workers: l0)" in same_name.stderr
            assert [w["state"] for w in c.get("/workers").json()] == ["running"]
    finally:
        first.stop()


def test_a_crash_loop_survives_sigkill_of_the_supervisor(config: NodeConfig, base: Path) -> None:
    """Item 4: failures, restarts and the handled exit are not reset by a SIGKILL and restart."""
    sup_cfg = fast(config)
    sup_cfg = sup_cfg.model_copy(update={"supervisor": sup_cfg.supervisor.model_copy(
        update={"backoff_cap_s": 300.0, "crashloop_after": 2})})
    cfg = base / "berth.toml"
    cfg.write_text(config_toml(sup_cfg))
    path = base / "assign.yaml"
    write(path, [spec("c0", 6930, "raise SystemExit(3)")])
    child = Berth(cfg, "supervise", "--assignments", str(path), "--no-api")
    poll_until(lambda: any(e["to"] == "crash-looping" for e in events(config)), "c0 crash-looping")
    child.stop(signal.SIGKILL)
    sup = Supervisor(Node(sup_cfg), assignments_path=str(path))
    sup.start()
    try:
        st = sup.status("c0")
        assert st.last_exit is not None and (st.phase, st.failures, st.last_exit.exit_code) == ("crash-looping", 2, 3)
        assert st.next_start_in_s is not None and 0 < st.next_start_in_s <= 300.0 and st.restarts == 1
        starts = sum(e["worker_id"] == "c0" and e["to"] == "starting" for e in events(config))
        assert starts == 2  # nothing relaunched it early
    finally:
        sup.stop(drain=True)


def test_ps_under_supervise_shows_what_the_supervisor_knows(cfg: tuple[NodeConfig, Path], base: Path) -> None:
    """Item 13 (supervise answers read-only on the socket) and 12 (rejections in ps)."""
    config, path = cfg
    assign = base / "assign.yaml"
    write(assign, [spec("s0", 6940), spec("bad", 6941, "raise SystemExit(4)"), {**spec("root", 6942), "user": "root"}])
    child = Berth(path, "supervise", "--assignments", str(assign), "--drain")
    try:
        with child.client(Path(config.api_socket)) as c:
            poll_until(lambda: any(w["failures"] >= 2 for w in c.get("/workers").json()), "bad failing")
            assert c.put("/assignments", json={"workers": []}).status_code == 403  # read-only
        out = subprocess.run([sys.executable, "-m", "berth", "--config", str(path), "ps", "--json"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        rows = {r["worker_id"]: r for r in json.loads(out.stdout)}
        assert rows["s0"]["supervisor_state"] == "running" and rows["s0"]["restarts"] == 0
        assert rows["bad"]["failures"] >= 2 and rows["bad"]["last_exit"]["exit_code"] == 4
        assert rows["root"]["supervisor_state"] == "rejected" and "user: " in rows["root"]["rejection"]
        table = subprocess.run([sys.executable, "-m", "berth", "--config", str(path), "ps"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
        assert "restarts" in table and "rejected:" in table and "root" in table
    finally:
        err = child.stop()
    assert "draining: " in err and not os.path.exists(config.api_socket)


def test_a_worker_whose_directory_cannot_be_removed_does_not_stop_the_others(config: NodeConfig,
                                                                             base: Path) -> None:
    """Issue 9 item 1, the supervisor's part, on the real engine: its removal fails (an immutable
    file in its root), it is reported and retried; the others are removed and launched meanwhile."""
    path = base / "assign.yaml"
    write(path, [spec("r0", 6950), spec("r1", 6951)])
    sup = Supervisor(Node(fast(config)), assignments_path=str(path))
    watch = Watch(sup)
    sup.start()
    pinned = Path(config.node.local_dir, "workers", "r0", "pinned")
    try:
        watch.until(lambda: watch.states() == {"r0": "running", "r1": "running"}, "both running")
        pinned.write_text("x")
        subprocess.run(["chattr", "+i", str(pinned)], check=True)
        write(path, [spec("r2", 6952)])
        sup.poke()
        watch.until(lambda: watch.states().get("r0") == "failed" and watch.states().get("r2") == "running"
                    and "r1" not in watch.states(), "r0 failed, r1 removed, r2 running")
        assert "cannot remove" in (sup.status("r0").last_error or "")
        assert any(e["worker_id"] == "r0" and "stop failed" in e["reason"] for e in events(config))
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
        watch.until(lambda: "r0" not in watch.states(), "r0 removed on a retry")
        assert sorted(containers(config)) == ["r2"] and not pinned.parent.exists()
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=False, capture_output=True)
        sup.stop(drain=True)


def test_supervise_refuses_assignments_others_can_write(cfg: tuple[NodeConfig, Path], base: Path,
                                                        users: dict[str, Any]) -> None:
    """Issue 18 item 4: a directory of mode 1777 holding a file another user wrote (naming a third
    user), /tmp itself, and a root-only directory holding a file of another user: each is one
    line before anything starts (no socket, no state, no container)."""
    config, path = cfg
    bob = users["berth-bob"]
    open_dir = base / "assign.d"
    open_dir.mkdir()
    os.chmod(open_dir, 0o1777)
    evil = open_dir / "evil.yaml"
    write(evil, [{**spec("x0", 6970), "user": "berth-carol"}])
    os.chown(evil, bob.pw_uid, bob.pw_gid)
    closed = base / "closed.d"
    closed.mkdir()
    theirs = closed / "theirs.yaml"
    write(theirs, [spec("x1", 6971)])
    os.chown(theirs, bob.pw_uid, bob.pw_gid)
    why = "; the node runs what the assignments say, as any user it allows: they must be root's alone to write"
    cases = [(["supervise", "--assignments", str(open_dir)], f"{open_dir} is writable by everyone (mode 1777)"),
             (["serve", "--assignments", str(open_dir)], f"{open_dir} is writable by everyone (mode 1777)"),
             (["supervise", "--assignments", "/tmp", "--no-api"], "/tmp is writable by everyone (mode 1777)"),
             (["supervise", "--assignments", str(closed)], f"{theirs} is owned by uid {bob.pw_uid} (mode 0644)")]
    for args, problem in cases:
        r = subprocess.run([sys.executable, "-m", "berth", "--config", str(path), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stderr) == (125, f"error: assignments: {problem}{why}\n"), args
    assert not Path(config.api_socket).exists() and not Path(config.state_dir, "supervisor.json").exists()
    assert containers(config) == {}


def test_assignment_files_are_checked_again_as_they_are_read(config: NodeConfig, base: Path,
                                                             users: dict[str, Any]) -> None:
    """Issue 18 item 4: a file chmodded to 0666 after start, and one another user added, are each
    rejected whole; the worker of the first keeps running as it was; a trusted change applies."""
    bob = users["berth-bob"]
    d = base / "assign.d"
    d.mkdir()
    write(d / "a.yaml", [spec("t0", 6960)])
    write(d / "b.yaml", [spec("t1", 6961)])
    sup = Supervisor(Node(fast(config)), assignments_path=str(d))
    watch = Watch(sup)
    sup.start()
    try:
        watch.until(lambda: watch.states() == {"t0": "running", "t1": "running"}, "both running")
        before = containers(config)
        os.chmod(d / "b.yaml", 0o666)
        evil = d / "c.yaml"
        write(evil, [{**spec("t2", 6962), "user": "berth-carol"}])
        os.chown(evil, bob.pw_uid, bob.pw_gid)
        write(d / "a.yaml", [spec("t0", 6960), spec("t3", 6963)])
        sup.poke()
        watch.until(lambda: watch.states().get("t3") == "running", "t3 running")
        assert sorted(sup.desired()) == ["t0", "t1", "t3"]
        assert {k: v for k, v in containers(config).items() if k != "t3"} == before
        assert sorted((r.source, r.field, r.reason) for r in sup.rejections()) == [
            (str(d / "b.yaml"), "assignments", f"{d / 'b.yaml'} is writable by everyone (mode 0666)"),
            (str(evil), "assignments", f"{evil} is owned by uid {bob.pw_uid} (mode 0644)")]
    finally:
        sup.stop(drain=True)


def test_a_second_node_name_on_the_same_state_dir_is_one_line(cfg: tuple[NodeConfig, Path], base: Path) -> None:
    """Issue 18 item 8: the second name adopted the first node's desired state and launched its
    workers; now it is refused before anything starts, naming both nodes."""
    config, path = cfg
    assign = base / "assign.yaml"
    write(assign, [spec("n0", 6980)])
    first = Berth(path, "supervise", "--assignments", str(assign), "--no-api")
    poll_until(lambda: "n0" in containers(config), "n0 running")
    first.stop()
    name = f"{config.node.name}-b"
    other = config_from_mapping({**config.model_dump(), "node": {**config.node.model_dump(), "name": name}})
    (base / "other.toml").write_text(config_toml(other))
    for args in (["serve"], ["supervise", "--assignments", str(assign)], ["launch", "--worker-id", "n9", "--topology",
                                                                         "topo-s", "--port", "6989", "--user",
                                                                         "berth-alice", "--", "true"]):
        r = subprocess.run([sys.executable, "-m", "berth", "--config", str(base / "other.toml"), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 125, args
        assert r.stderr.startswith(f"error: node.name: {config.state_dir} holds the state of node "
                                   f"{config.node.name!r}; this config is node {name!r}: give each node its own "
                                   "node.state_dir"), r.stderr
        assert len(r.stderr.splitlines()) == 1
    try:
        assert containers(other) == {}
    finally:
        purge(name)
