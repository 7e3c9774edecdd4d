"""Bad input under a real Storm (issue 17 item 8): berth not running, an image the node does not
allow, a user unknown on the node, a memory request over the node's maximum. Each is one clear
line in Storm's supervisor log, naming the worker and berth's reason; nothing hangs; the supervisor
goes on (no exit 20, no crash loop), Storm's slot reports the launch as exit code 125 and tries
again after its start timeout.

The cluster's Nimbus allows any image (``storm.oci.allowed.images: ["*"]``) while this node allows
only its own: the node's policy is narrower than the cluster's, so the request reaches the node.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bench._storm import WORDCOUNT
from bench._stormberth import IMAGE, BerthStorm

from .conftest import BASE, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.storm]

WAIT = 300.0
START_TIMEOUT_S = 30
"""The supervisor's ``supervisor.worker.start.timeout.secs`` here (Storm's default: 120)."""


@pytest.fixture(scope="module")
def strict(zookeeper: Any, users: dict[str, Any], storm_image: str, engine: str) -> Iterator[BerthStorm]:
    base = BASE / uuid.uuid4().hex[:10]
    base.mkdir(parents=True, mode=0o755)
    s = BerthStorm(runtime="docker", base=base, users="berth-alice berth-bob berth-ghost",
                   extra={"berth.container.max.memory.mb": 1100,
                          "supervisor.worker.start.timeout.secs": START_TIMEOUT_S})
    try:
        s.start(berth=False)
        nimbus = s.instance_dir / "daemon" / "nimbus" / "storm.yaml"
        with nimbus.open("a") as out:
            out.write(f'storm.oci.allowed.images: ["*"]\nstorm.oci.image: "{IMAGE}"\n')
        s.cluster.daemon("stop", "nimbus")
        s.cluster.daemon("start", "nimbus")
        poll_until(lambda: s.cluster.run("status", check=False).returncode == 0, "Nimbus again", WAIT, every=2)
        yield s
    finally:
        s.purge()


def submit(s: BerthStorm, user: str = "berth-alice", conf: dict[str, str] | None = None) -> tuple[str, str]:
    name = "bad-" + uuid.uuid4().hex[:6]
    s.cluster.submit(WORDCOUNT, name, "1", user=user, conf=conf)
    info = s.cluster.info(name)
    assert info is not None
    return name, str(info["id"])


def logged(s: BerthStorm, said: re.Pattern[str], what: str) -> str:
    """The first match of ``said`` in Storm's supervisor log (its group 1: the worker id), waited for."""
    found: list[str] = []

    def there() -> bool:
        found[:] = said.findall(s.supervisor_log())
        return bool(found)

    poll_until(there, what, WAIT, every=1)
    return found[0]


def carries_on(s: BerthStorm) -> None:
    """Storm's supervisor is still up and never took the error for a fatal one (Slot exits 20)."""
    assert s.cluster.run("status", check=False).returncode == 0
    log = s.supervisor_log()
    assert "Error when processing event" not in log and "Halting process" not in log


def forget(s: BerthStorm, name: str) -> None:
    s.cluster.kill(name)
    poll_until(lambda: s.cluster.info(name) is None, f"Nimbus to forget {name}", WAIT, every=2)


def test_berth_not_running_is_a_clear_error_and_storm_launches_once_it_is(strict: BerthStorm) -> None:
    assert not strict.answers()
    name, topo = submit(strict)
    said = re.compile(rf"berth could not be asked to launch worker (\S+) of {re.escape(topo)} on port \d+ as "
                      rf"berth-alice \(.*; is `berth serve --storm` running, with its socket at {strict.socket}\?\)")
    wid = logged(strict, said, "the plugin's error in Storm's log")
    assert f"Worker Process {wid} exited with code: 125" in strict.supervisor_log()
    carries_on(strict)
    strict.start_berth()
    # Storm's slot notices at its start timeout, cleans up, and launches again: through berth now
    poll_until(lambda: strict.cluster.acked(name) > 0, f"{name} acking once berth runs", WAIT, every=3)
    carries_on(strict)
    forget(strict, name)


@pytest.mark.parametrize(("user", "conf", "field", "words"), [
    ("berth-alice", {"topology.oci.image": "berth/python:latest"}, "image",
     "'berth/python:latest' is not in the node's allowed images"),
    ("berth-ghost", None, "user", "no such user 'berth-ghost' on this node"),
    ("berth-alice", {"topology.component.resources.onheap.memory.mb": "512"}, "memory_mb",
     "is above the node's maximum of 1100 MiB per worker"),
], ids=["image", "unknown-user", "memory"])
def test_a_refused_launch_is_one_clear_line_and_the_supervisor_carries_on(
        strict: BerthStorm, user: str, conf: dict[str, str] | None, field: str, words: str) -> None:
    if not strict.answers():
        strict.start_berth()
    name, topo = submit(strict, user, conf)
    said = re.compile(rf"berth refused to launch worker (\S+) of {re.escape(topo)} on port \d+ as {user}: "
                      rf"HTTP 409: {field}: [^\n]*{re.escape(words)}")
    wid = logged(strict, said, f"berth's refusal ({field}) in Storm's log")
    assert f"Worker Process {wid} exited with code: 125" in strict.supervisor_log()
    out = strict.berth_cli("ps", "--json")
    assert topo not in out.stdout  # nothing was made for it
    carries_on(strict)
    forget(strict, name)
    carries_on(strict)
