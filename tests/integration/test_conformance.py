"""One suite every runtime passes: the real engine, real runc, plain processes (where it applies),
an OCI runtime registered from outside berth (``tests/plugins/oci``), and the in-memory fake the
unit tests use, so that it cannot drift from the real ones.

Each test goes through ``Node`` only, so it holds for any runtime behind ``base.Runtime``, chosen
by name through the registry; what a runtime declares it cannot do (``Capabilities``) is skipped
for it, never asserted loosely. A runtime that runs no program (``runs_programs=False``: the fake)
is told what the program would have done (``Program``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth import Node, NodeConfig, WorkerNotFound, register_runtime
from berth._runtimes import fake
from berth._runtimes.base import WorkerState, WorkerStatus
from berth._runtimes.fake.runtime import FakeRuntime

from ..plugins import oci
from ._helpers import WAIT, WAIT_FOR_GO, Exits, go, root_of, wait_file
from ._helpers import worker as spec
from .conftest import RUNC_IMAGES, make_config, poll_until

pytestmark = pytest.mark.integration

RUNTIMES = ("docker", "runc", "process", "oci", "fake")
NEEDS = {"docker": "engine", "runc": "runc_ready", "oci": "runc_ready"}
READY_THEN_GO = "open('ready', 'w').close()\n" + WAIT_FOR_GO + "import sys\nsys.exit(int(open('go').read() or 0))\n"


@pytest.fixture(params=RUNTIMES)
def rt_config(request: pytest.FixtureRequest, users: dict[str, Any], base: Path, node_name: str) -> NodeConfig:
    runtime = request.param
    request.getfixturevalue(NEEDS.get(runtime, "users"))
    register_runtime(oci.PLUGIN)  # from outside the package, as anyone's runtime would be
    register_runtime(fake.PLUGIN)
    return make_config(base, node_name, runtime=runtime).with_runtime_table(oci.NAME, images=RUNC_IMAGES)


class Program:
    """What a worker's program does by itself, said to a runtime that runs none (the fake)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.fake: FakeRuntime | None = None
        if not node.runtime.capabilities.runs_programs:
            assert isinstance(node.runtime, FakeRuntime)
            self.fake = node.runtime

    def ready(self, wid: str) -> None:
        """The program has started (READY_THEN_GO wrote ``ready``)."""
        if self.fake is None:
            wait_file(root_of(self.node, wid) / "ready", self.node, wid)

    def go(self, wid: str, code: str = "") -> None:
        """Release READY_THEN_GO: it exits with ``code``."""
        if self.fake is None:
            go(self.node, wid, code)
        else:
            self.fake.finish(wid, int(code or 0))

    def ended(self, wid: str, code: int = 0, **how: Any) -> None:
        """The program ended by itself (its script says so), with ``code`` or as ``how`` says."""
        if self.fake is not None:
            self.fake.finish(wid, code, **how)

    def on_sigterm(self, wid: str, code: int) -> None:
        """The program handles SIGTERM by exiting with ``code`` (its script says so)."""
        if self.fake is not None:
            self.fake.worker(wid).on_term = code


@pytest.fixture
def rt(rt_config: NodeConfig) -> Iterator[Node]:
    n = Node(rt_config)
    yield n
    n.close()


def _needs(node: Node, what: str) -> None:
    if not getattr(node.runtime.capabilities, what):
        pytest.skip(f"the {node.runtime.name} runtime declares {what}=False")


def _ready(node: Node, wid: str) -> None:
    Program(node).ready(wid)


def test_the_runtime_is_the_one_the_config_names(rt: Node) -> None:
    """Chosen by name through the registry, whoever registered it; its state is its own."""
    assert rt.runtime.name == rt.config.node.runtime
    if rt.runtime.name == oci.NAME:
        handle = rt.launch(spec("c-own", READY_THEN_GO), on_exit=lambda r: None)
        assert Path(rt.config.runtime_dir(oci.NAME), "workers", "c-own", "meta.json").is_file()
        assert not Path(rt.config.runtime_dir("runc")).exists()  # not runc's directory, not runc's shim
        Program(rt).go("c-own", "0")
        assert rt.wait("c-own", WAIT).container_id == handle.container_id


def test_launch_and_exit_code_3(rt: Node) -> None:
    handle = rt.launch(spec("c-exit3", "print('started', flush=True)\nraise SystemExit(3)"), on_exit=lambda r: None)
    Program(rt).ended("c-exit3", 3)
    rec = rt.wait("c-exit3", WAIT)
    assert (rec.worker_id, rec.container_id, rec.exit_code, rec.signal, rec.oom_killed) == \
        ("c-exit3", handle.container_id, 3, None, False)
    assert rec.started_at and rec.finished_at and not rec.status_lost
    assert rec.exact == rt.runtime.capabilities.exact_status


def test_sigkill_is_signal_9_and_not_oom(rt: Node) -> None:
    rt.launch(spec("c-kill", READY_THEN_GO), on_exit=lambda r: None)
    _ready(rt, "c-kill")
    rt.force_kill("c-kill")
    rec = rt.wait("c-kill", WAIT)
    assert (rec.exit_code, rec.signal, rec.oom_killed, rec.oom_victim) == (137, 9, False, None)


def test_oom_kill_is_reported_as_oom(rt: Node) -> None:
    _needs(rt, "oom_reported")
    rt.launch(spec("c-oom", "b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))\n", memory_mb=48),
              on_exit=lambda r: None)
    Program(rt).ended("c-oom", signal=9, oom=True)
    rec = rt.wait("c-oom", WAIT)
    assert (rec.signal, rec.oom_killed, rec.oom_victim) == (9, True, "worker")
    assert rt.inspect("c-oom").oom_killed


def test_grace_kill_ends_with_the_workers_own_code(rt: Node) -> None:
    script = ("import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
              "open('ready', 'w').close()\nwhile True: signal.pause()\n")
    rt.launch(spec("c-term", script), on_exit=lambda r: None)
    Program(rt).on_sigterm("c-term", 42)
    _ready(rt, "c-term")
    rt.kill("c-term", grace_s=60)
    rec = rt.wait("c-term", WAIT)
    assert (rec.exit_code, rec.signal) == (42, None)


def test_a_stop_ends_a_worker_that_does_not_handle_sigterm_without_waiting_out_the_grace(rt: Node) -> None:
    """SIGTERM's default action ends a worker at once: on docker through the engine's init, as a
    plain process by the kernel. A runc worker is PID 1 of its namespace, for which the kernel drops
    a signal it does not handle, so the shim kills it at once instead of letting the grace run out."""
    rt.launch(spec("c-noterm", READY_THEN_GO), on_exit=lambda r: None)
    _ready(rt, "c-noterm")
    threading.Thread(target=rt.kill, args=("c-noterm", 3600.0), daemon=True).start()
    rec = rt.wait("c-noterm", WAIT)  # an hour's grace: WAIT is reached only if the stop waits it out
    assert rec.signal in (15, 9) and rec.exit_code == 128 + rec.signal and not rec.oom_killed, rec


def test_list_shows_state_digest_and_exit_code(rt: Node) -> None:
    handle = rt.launch(spec("c-list", READY_THEN_GO, port=6701), on_exit=lambda r: None)
    _ready(rt, "c-list")
    (w,) = [w for w in rt.ps() if w.worker_id == "c-list"]
    assert (w.state, w.port, w.user, w.container_id) == (WorkerStatus.RUNNING, 6701, "berth-alice",
                                                         handle.container_id)
    assert w.spec_digest == handle.plan.label_map["berth.spec"]
    Program(rt).go("c-list", "9")
    rt.wait("c-list", WAIT)

    def listed() -> WorkerState:
        (w,) = [w for w in rt.ps() if w.worker_id == "c-list"]
        return w

    # The engine may send its exit event a moment before its listing says so: its state, so polled.
    poll_until(lambda: listed().state == WorkerStatus.EXITED, "the listing to show the exit")
    assert listed().exit_code == 9


def test_recover_after_a_restart_reports_each_exit_once(rt_config: NodeConfig) -> None:
    first = Node(rt_config)
    _needs(first, "survives_restart")
    for wid in ("c-r1", "c-r2"):
        first.launch(spec(wid, READY_THEN_GO), on_exit=lambda r: None)
        _ready(first, wid)
    first.close()
    Program(first).go("c-r1", "11")  # ends while no berth watches
    observer = Node(rt_config)
    poll_until(lambda: observer.inspect("c-r1").state == WorkerStatus.EXITED, "c-r1 to end")
    got = Exits()
    second = Node(rt_config, on_exit=got)
    report = second.recover()
    assert [(r.worker_id, r.exit_code) for r in report.reported] == [("c-r1", 11)]
    assert report.adopted == ["c-r2"]
    Program(second).go("c-r2", "12")
    recs = got.wait_for(2)
    assert sorted((r.worker_id, r.exit_code) for r in recs) == [("c-r1", 11), ("c-r2", 12)]
    with Node(rt_config) as third:
        assert third.recover().reported == []  # the journal remembers
    second.close()


def test_memory_usage_exec_as_the_worker_and_logs(rt: Node, users: dict[str, Any]) -> None:
    _needs(rt, "runs_programs")
    script = "print('line one')\nprint('line two', flush=True)\n" + READY_THEN_GO
    rt.launch(spec("c-mem", script, memory_mb=128), on_exit=lambda r: None)
    _ready(rt, "c-mem")
    used = rt.memory_usage("c-mem")
    assert 0 < used < 128 * 2**20
    res = rt.exec("c-mem", ["id", "-u"])
    assert (res.exit_code, res.output.strip()) == (0, str(users["berth-alice"].pw_uid).encode())
    assert rt.exec("c-mem", ["sh", "-c", "exit 4"]).exit_code == 4
    assert b"".join(rt.logs("c-mem")) == b"line one\nline two\n"
    assert b"".join(rt.logs("c-mem", tail=1)) == b"line two\n"
    go(rt, "c-mem", "0")
    assert rt.wait("c-mem", WAIT).exit_code == 0


def test_remove_leaves_nothing(rt: Node) -> None:
    rt.launch(spec("c-rm", READY_THEN_GO), on_exit=lambda r: None)
    _ready(rt, "c-rm")
    rt.cleanup("c-rm")
    with pytest.raises(WorkerNotFound):
        rt.inspect("c-rm")
    assert all(w.worker_id != "c-rm" for w in rt.ps())
    assert not root_of(rt, "c-rm").exists()
