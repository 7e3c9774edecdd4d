"""The supervisor against a real dockerd: assign, remove, replace, crash-loop, survive SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from berth import Node, NodeConfig, Supervisor
from berth._core.spec import spec_digest, spec_from_mapping
from berth._service.bus import Event, Exited, PassDone, Transition

from ._helpers import release
from .conftest import ROOT, config_toml, make_config, poll_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["docker", "runc"])
def config(request: pytest.FixtureRequest, users: dict[str, Any], base: Path, node_name: str) -> NodeConfig:
    """Every test here runs on the engine and on runc (under berth-shim)."""
    request.getfixturevalue("engine" if request.param == "docker" else "runc_ready")
    return make_config(base, node_name, runtime=request.param)

WAIT = 120.0
FOREVER = "import signal\nsignal.pause()\n"
UNTIL_GO = ("import os, sys, time\nwhile not os.path.exists('go'): time.sleep(0.02)\n"
            "sys.exit(int(open('go').read() or 0))\n")


def fast(config: NodeConfig) -> NodeConfig:
    sup = config.supervisor.model_copy(update={"grace_s": 2.0, "backoff_base_s": 0.2, "backoff_cap_s": 1.6,
                                               "crashloop_after": 3, "healthy_after_s": 30.0, "resync_s": 0.5})
    return config.model_copy(update={"supervisor": sup})


def worker(wid: str, port: int, script: str = FOREVER, **kw: Any) -> dict[str, Any]:
    return {"worker_id": wid, "topology_id": "topo-s", "port": port, "user": "berth-alice",
            "command": ["python3", "-c", script], "memory_mb": kw.pop("memory_mb", 48), **kw}


def write(path: Path, workers: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"workers": workers}))
    tmp.replace(path)


class Watch:
    """Wakes the test on every supervisor transition: waiting is event-driven, never a sleep."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.cond = threading.Condition()
        self.lines: list[Mapping[str, Any]] = []
        self.exits: list[Exited] = []
        self.passes = 0
        sup.subscribe(self._on)

    def _on(self, event: Event) -> None:
        with self.cond:
            if isinstance(event, Transition):
                self.lines.append(event.line)
            elif isinstance(event, Exited):
                self.exits.append(event)
            elif isinstance(event, PassDone):
                self.passes += 1
            self.cond.notify_all()

    def until(self, pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), f"timed out waiting for {what}: {self.sup.statuses()}"

    def states(self) -> dict[str, str]:
        return {s.worker_id: s.phase for s in self.sup.statuses()}


@pytest.fixture
def supervised(config: NodeConfig, base: Path) -> Iterator[tuple[Supervisor, Watch, Path]]:
    path = base / "assignments.yaml"
    write(path, [])
    sup = Supervisor(Node(fast(config)), assignments_path=str(path))
    watch = Watch(sup)
    sup.start()
    yield sup, watch, path
    sup.stop(drain=True)


def test_assign_remove_and_replace(supervised: tuple[Supervisor, Watch, Path]) -> None:
    sup, watch, path = supervised
    specs = [worker(f"s{i}", 6700 + i) for i in range(5)]
    write(path, specs)
    sup.poke()
    watch.until(lambda: list(watch.states().values()).count("running") == 5, "5 running")
    running = {w.worker_id: w.container_id for w in sup.node.ps() if w.running}
    assert sorted(running) == [f"s{i}" for i in range(5)]

    write(path, specs[:3])
    sup.poke()
    watch.until(lambda: sorted(watch.states()) == ["s0", "s1", "s2"], "2 removed")
    after = {w.worker_id: w.container_id for w in sup.node.ps()}
    assert after == {k: running[k] for k in ("s0", "s1", "s2")}  # removed, and the others untouched
    assert not Path(sup.config.node.local_dir, "workers", "s3").exists()

    changed = [*specs[:2], {**specs[2], "memory_mb": 64}]
    write(path, changed)
    sup.poke()
    new_digest = spec_digest(spec_from_mapping(changed[2]))
    watch.until(lambda: any(w.worker_id == "s2" and w.running and w.spec_digest == new_digest
                            for w in sup.node.ps()), "s2 replaced")
    now = {w.worker_id: w.container_id for w in sup.node.ps() if w.running}
    assert now["s2"] != running["s2"] and now["s0"] == running["s0"] and now["s1"] == running["s1"]
    assert sup.node.describe("s2").request["memory_mb"] == 64
    events = [json.loads(x) for x in Path(sup.config.state_dir, "events.jsonl").read_text().splitlines()]
    assert any(e["worker_id"] == "s2" and e["reason"] == "assignment changed: replacing" for e in events)
    assert any(e["worker_id"] == "s4" and e["to"] == "stopped" for e in events)


def test_a_failing_worker_backs_off_and_is_marked_crash_looping(supervised: tuple[Supervisor, Watch, Path]) -> None:
    sup, watch, path = supervised
    write(path, [worker("bad", 6750, "raise SystemExit(1)")])
    sup.poke()
    watch.until(lambda: watch.states().get("bad") == "crash-looping", "crash-looping")
    watch.until(lambda: sup.status("bad").restarts >= 3, "restarts go on while crash-looping")
    delays = [e["restart_in_s"] for e in watch.lines if e["worker_id"] == "bad" and "restart_in_s" in e]
    assert delays[:3] == [0.2, 0.4, 1.6]  # doubling, then the cap once crash-looping
    assert all(d == 1.6 for d in delays[3:])
    st = sup.status("bad")
    assert st.last_exit is not None and st.last_exit.exit_code == 1 and st.failures >= 3


def test_a_rejected_entry_does_not_disturb_the_others(supervised: tuple[Supervisor, Watch, Path]) -> None:
    sup, watch, path = supervised
    write(path, [worker("ok1", 6760), {**worker("nope", 6761), "user": "root"}, {"worker_id": "xx", "port": 0}])
    sup.poke()
    watch.until(lambda: watch.states().get("ok1") == "running", "ok1 running")
    assert "nope" not in watch.states()
    by_id = {r.worker_id: r for r in sup.rejected}
    assert by_id["nope"].field == "user" and "root" in by_id["nope"].reason
    assert "port: Input should be greater than or equal to 1" in str(by_id["xx"])
    assert "topology_id: is required" in str(by_id["xx"])


CHILD = """
import sys
from berth._cli import main
sys.argv = ["berth", "--config", sys.argv[1], "supervise", "--assignments", sys.argv[2]]
main()
"""


def _events(config: NodeConfig) -> list[dict[str, Any]]:
    p = Path(config.state_dir, "events.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_supervisor_sigkilled_and_restarted_adopts_and_restarts_once(config: NodeConfig, base: Path) -> None:
    config = fast(config)
    cfg, path = base / "berth.toml", base / "assignments.yaml"
    cfg.write_text(config_toml(config))
    write(path, [worker(f"k{i}", 6770 + i, UNTIL_GO) for i in range(3)])
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), str(path)], cwd=ROOT,
                             stderr=subprocess.DEVNULL)
    try:
        observer = Node(config)

        def three_running() -> bool:
            assert child.poll() is None, "supervise died"
            return sum(w.running for w in observer.ps()) == 3

        poll_until(three_running, "3 workers running under the child supervisor")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    before = {w.worker_id: (w.container_id, w.started_at) for w in observer.ps(detail=True)}
    release(Path(config.node.local_dir, "workers", "k1"), "5")  # k1 exits while no supervisor runs
    poll_until(lambda: observer.inspect("k1").state == "exited", "k1 exited")
    n_events = len(_events(config))

    sup = Supervisor(Node(config), assignments_path=str(path))
    watch = Watch(sup)
    sup.start()
    try:
        watch.until(lambda: watch.states().get("k1") == "running" and sup.status("k1").restarts == 1,
                    "k1 restarted")
        after = {w.worker_id: (w.container_id, w.started_at) for w in sup.node.ps(detail=True)}
        assert after["k0"] == before["k0"] and after["k2"] == before["k2"]  # adopted, not restarted
        assert after["k1"][0] != before["k1"][0]
        assert len(after) == 3  # nothing duplicated
        last = sup.status("k1").last_exit
        assert last is not None and last.exit_code == 5
        # one more reconcile pass settles nothing new: still exactly one restart
        sup.poke()
        watch.until(lambda: len(watch.lines) > 0, "a transition")
        starts = [e for e in _events(config)[n_events:] if e["worker_id"] == "k1" and e["to"] == "starting"]
        assert len(starts) == 1
        assert sup.status("k1").restarts == 1
    finally:
        sup.stop(drain=True)


def test_shutdown_leaves_workers_running_unless_drained(config: NodeConfig, base: Path) -> None:
    path = base / "a.yaml"
    write(path, [worker("d0", 6790)])
    sup = Supervisor(Node(fast(config)), assignments_path=str(path))
    watch = Watch(sup)
    sup.start()
    watch.until(lambda: watch.states().get("d0") == "running", "d0 running")
    cid = next(w.container_id for w in sup.node.ps() if w.worker_id == "d0")
    sup.stop()
    again = Supervisor(Node(fast(config)), assignments_path=str(path))
    again.start()
    assert [(w.worker_id, w.container_id, w.running) for w in again.node.ps()] == [("d0", cid, True)]
    again.stop(drain=True)
    assert Node(config).ps() == []


def test_events_are_json_lines_with_from_and_to(supervised: tuple[Supervisor, Watch, Path]) -> None:
    sup, watch, path = supervised
    write(path, [worker("j0", 6795)])
    sup.poke()
    watch.until(lambda: watch.states().get("j0") == "running", "j0 running")
    lines = [json.loads(x) for x in Path(sup.config.state_dir, "events.jsonl").read_text().splitlines()]
    mine = [(e["from"], e["to"]) for e in lines if e["worker_id"] == "j0"]
    assert mine[:2] == [("pending", "starting"), ("starting", "running")]
    assert all({"ts", "worker_id", "from", "to", "reason"} <= set(e) for e in lines)
