"""berth-worker-launcher under a real Storm (issue 17 items 3, 6): Storm's supervisor, with
``supervisor.run.worker.as.user: true`` and berth's plugin, calls the launcher for each step it
takes as the topology's user; each call Storm really makes is logged by berth and leaves Storm's
ownership and modes; ``storm kill`` ends in Storm's own ``rmr`` through berth; the node has no
setuid program. And ``berth demo --storm`` runs end to end on both runtimes.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench import _stormberth as stormberth
from berth._cli.storm_demo import run_storm_demo, setuid_files
from berth._cli.storm_stack import StormStack

from .conftest import ROOT, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.storm]

WAIT = 420.0
"""Storm's own pace on 2 shared cores; Nimbus deletes a killed topology's blobs after 5 minutes
(``nimbus.topology.blobstore.deletion.delay.ms``), and only then does the supervisor remove its code."""
WORK = Path("/var/lib/berth-dev/storm-launcher-test")


@pytest.fixture(scope="session")
def plugin_jar() -> str:
    """berth's plugin, as ``scripts/test`` builds it (built here if missing)."""
    return str(stormberth.plugin_jar())


@pytest.fixture
def stack(zookeeper: Any, users: Any, engine: str, storm_image: str, plugin_jar: str) -> Iterator[StormStack]:
    """A Storm instance of this test's own (``scripts/storm start`` installs Storm if needed), berth beside it."""
    instance = "wl-" + uuid.uuid4().hex[:6]
    s = StormStack(str(ROOT / "scripts" / "storm"), plugin_jar, instance, "docker", WORK / instance)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(WORK / instance, ignore_errors=True)


def ids(path: str | Path) -> tuple[str, str, int]:
    import grp
    import pwd

    st = os.lstat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def test_storms_calls_go_through_berth_and_leave_storms_modes(stack: StormStack) -> None:
    storm, config = stack.storm, stack.config
    assert config is not None
    storm.submit("wc-l", 1, "berth-alice")
    poll_until(lambda: storm.acked("wc-l") > 0, "wc-l to ack tuples", WAIT, every=2)
    info = storm.info("wc-l")
    assert info is not None and info["owner"] == "berth-alice"
    topo, port = info["id"], info["workers"][0]["port"]
    code = Path(config.node.local_dir, "supervisor", "stormdist", topo)
    arts = Path(config.artifacts_root, topo, str(port))
    calls = stack.launcher_calls()
    # the exact argv Storm built (ClientSupervisorUtils), as berth logged it, each answered 0
    assert f"berth-alice code-dir {code} -> exit 0" in calls
    assert f"berth-alice artifacts-dir {code}/shared_by_topology -> exit 0" in calls
    assert f"berth-alice artifacts-dir {arts} -> exit 0" in calls
    assert ids(code) == ("berth-alice", "storm", 0o2570)  # the user reads its code, never changes it
    assert ids(code / "stormjar.jar") == ("berth-alice", "storm", 0o460)
    assert ids(code / "resources")[2] == 0o2570
    assert ids(code / "shared_by_topology") == ("berth-alice", "storm", 0o2770)
    assert ids(arts) == ("berth-alice", "storm", 0o2770)
    env = stack.env
    assert setuid_files(env["STORM_HOME"], config.node.local_dir, config.node.log_dir, str(stack.dir)) == []
    assert not os.stat(stack.launcher).st_mode & (stat.S_ISUID | stat.S_ISGID)

    storm.kill("wc-l")
    users_dir = Path(config.node.local_dir, "workers-users")
    poll_until(lambda: not any(users_dir.iterdir()), "Storm to delete the worker's user file", WAIT, every=2)
    # Storm names its own user for its own file: refused with 255, as Storm's launcher refuses it,
    # and Storm deletes the file itself
    assert any(line.startswith(f"storm rmr {users_dir}/") and line.endswith("-> exit 255")
               for line in stack.launcher_calls())
    poll_until(lambda: not code.exists(), "the supervisor to remove the topology's code", WAIT, every=5)
    assert f"berth-alice rmr {code} -> exit 0" in stack.launcher_calls()  # as its owner, through berth
    assert not any(Path(config.node.local_dir, "workers").iterdir())


@pytest.mark.parametrize("runtime", ["docker", "runc"])
def test_the_storm_demo_runs_and_leaves_nothing(runtime: str, request: pytest.FixtureRequest, zookeeper: Any,
                                                users: Any, storm_image: str, plugin_jar: str) -> None:
    request.getfixturevalue("engine" if runtime == "docker" else "runc_ready")
    out = io.StringIO()
    instance = f"demo-t{uuid.uuid4().hex[:6]}"
    try:
        code = run_storm_demo(Console(file=out, width=300), runtime, str(ROOT / "scripts" / "storm"), plugin_jar,
                              WORK, instance)
    finally:
        shutil.rmtree(WORK / instance, ignore_errors=True)
    text = out.getvalue()
    assert code == 0, text[-4000:]
    assert text.count(": PASS — ") == 3  # berth audit passes on each of the three workers
    assert "Permission denied" in text and "-xdev -perm /6000 -type f: 0 file(s)" in text
    assert "Storm's supervisor relaunched it through berth" in text and "the topology goes on" in text
    assert re.search(rf"containers of node storm-{instance}: 0; worker dirs in \S+: 0\n", text)
