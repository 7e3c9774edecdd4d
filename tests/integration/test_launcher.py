"""berth-worker-launcher against real workers, on both runtimes: Storm's ``signal`` and ``profiler``
argv (``DefaultResourceIsolationManager``), run by the installed program as the supervisor's user
(berth-dave stands in for ``storm``) over a real socket, reach only that user's own workers."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from berth import Node, NodeConfig
from berth._cli.launcher import install_program
from berth._core.config import config_from_mapping
from berth._node.stormdirs import StormDirs
from berth._service.apimodels import install_error_handlers
from berth._service.launcher_api import launcher_router
from berth._service.storm_api import peer_protocol
from berth._storm.yaml import BERTH_PLUGIN

from ..polling import poll_until
from ._helpers import WAIT, Exits, wait_file, worker
from .conftest import make_config

pytestmark = pytest.mark.integration

CHILD = r"""
import os, subprocess, time
child = subprocess.Popen(["sleep", "600"])
open(".child", "w").write(str(child.pid)); os.rename(".child", "child")
child.wait()
open(".child-ended", "w").write(str(child.returncode)); os.rename(".child-ended", "child-ended")
while True: time.sleep(1)
"""
"""A worker with one child (``sleep``); it writes ``child-ended`` with the child's code when it ends."""


@dataclass
class Served:
    """What the launcher's routes need of ``berth serve --storm``: here a node whose workers berth
    launched itself (the commands act on running workers, whoever launched them)."""

    node: Node
    config: NodeConfig
    dirs: StormDirs


@pytest.fixture(params=["docker", "runc"])
def node(request: pytest.FixtureRequest, users: dict[str, Any], base: Path, node_name: str) -> Iterator[Node]:
    request.getfixturevalue("engine" if request.param == "docker" else "runc_ready")
    config = make_config(base, node_name, runtime=request.param)
    data = config.model_dump(mode="python")
    data["storm"] = {"plugin": BERTH_PLUGIN, "supervisor_user": "berth-dave"}
    n = Node(config_from_mapping(data))
    yield n
    n.close()


@pytest.fixture
def program(node: Node) -> Iterator[tuple[str, str]]:
    """(the installed program, berth's socket) with the launcher's routes for ``node`` behind it."""
    import uvicorn

    run = Path(tempfile.mkdtemp(prefix="berth-launcher-", dir="/tmp"))
    os.chmod(run, 0o755)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(launcher_router(Served(node, node.config, StormDirs.from_config(node.config))))
    sock = str(run / "api.sock")
    server = uvicorn.Server(uvicorn.Config(app, uds=sock, http=peer_protocol(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll_until(lambda: server.started, "the launcher's routes to listen", timeout=30)
    os.chown(sock, -1, 2300)  # berth-team: berth-dave's group, as api.socket_group
    os.chmod(sock, 0o660)
    exe = str(run / "berth-worker-launcher")
    install_program(exe)
    yield exe, sock
    server.should_exit = True
    thread.join(timeout=30)
    for name in ("api.sock", "berth-worker-launcher"):
        with contextlib.suppress(OSError):
            os.unlink(run / name)
    os.rmdir(run)


def as_storm(program: tuple[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    exe, sock = program
    pw = pwd.getpwnam("berth-dave")
    return subprocess.run([exe, *argv], user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=os.getgrouplist("berth-dave", pw.pw_gid), env={"BERTH_SOCKET": sock},
                          capture_output=True, text=True, timeout=120)


def host_pid_of(main: int, name: str) -> int:
    """The host pid of a process called ``name`` below the worker's main process."""
    todo = [main]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/comm") as fh:
            if fh.read().strip() == name:
                return pid
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{pid}/children") as fh:
            todo += [int(p) for p in fh.read().split()]
    raise AssertionError(f"no {name} under {main}")


def test_signal_reaches_a_process_of_the_users_worker_and_nothing_else(node: Node, program: tuple[str, str]) -> None:
    exits = Exits()
    node.launch(worker("w-sig", CHILD), on_exit=exits)
    wait_file(Path(node.config.node.local_dir, "workers", "w-sig", "child"), node, "w-sig")
    main = node.inspect("w-sig").pid
    assert main
    child = host_pid_of(main, "sleep")
    for user, pid in (("berth-bob", child), ("berth-alice", os.getpid()), ("berth-alice", 1)):
        refused = as_storm(program, user, "signal", str(pid), "9")
        assert refused.returncode == 255 and "Operation not permitted" in refused.stdout, refused
    assert not node.all_dead("w-sig")
    done = as_storm(program, "berth-alice", "signal", str(child), "15")
    assert done.returncode == 0 and f"Killing process {child} with 15" in done.stdout, done
    ended = Path(node.config.node.local_dir, "workers", "w-sig", "child-ended")
    wait_file(ended, node, "w-sig")
    assert ended.read_text() == "-15"  # the worker saw its child die of SIGTERM
    done = as_storm(program, "berth-alice", "signal", str(main), "9")
    assert done.returncode == 0, done
    assert exits.wait_for(1, WAIT)[0].worker_id == "w-sig"
    assert as_storm(program, "berth-alice", "signal", str(main), "9").returncode == 9  # gone


def test_profiler_runs_in_the_workers_container_as_its_user(node: Node, program: tuple[str, str]) -> None:
    node.launch(worker("w-prof", CHILD, port=6711), on_exit=lambda r: None)
    wait_file(Path(node.config.node.local_dir, "workers", "w-prof", "child"), node, "w-prof")
    arts = Path(node.config.artifacts_root, "topo-h", "6711")
    script = arts / "storm-worker-script.sh"  # where DefaultResourceIsolationManager writes it
    script.write_text("#!/bin/bash\n\nexport 'X=1'\n\nid -u\nreadlink /proc/self/ns/pid\nexit 5\n")
    done = as_storm(program, "berth-alice", "profiler", str(arts), str(script))
    assert done.returncode == 5, done
    main = node.inspect("w-prof").pid
    assert main
    assert done.stdout.splitlines() == ["main : command provided profiler", "main : user is berth-alice",
                                        "2101", os.readlink(f"/proc/{main}/ns/pid")]  # the worker's namespace
    refused = as_storm(program, "berth-bob", "profiler", str(arts), str(script))
    assert refused.returncode == 7 and "no running worker of berth-bob" in refused.stdout
