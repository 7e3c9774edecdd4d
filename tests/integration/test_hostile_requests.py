"""Hostile requests through a real node: each is refused with a typed error, and leaves nothing
behind, no container, no directory, no file (the unit tests cover the refusals themselves)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from berth import BerthError, IdentityError, LaunchError, Node, PolicyError, WorkerSpec

from ._helpers import WAIT, snapshot, worker
from .conftest import BB_IMAGE, SOCKET, make_config

pytestmark = pytest.mark.integration


@pytest.fixture
def strict_node(engine: str, users: dict[str, Any], base: Path, node_name: str) -> Iterator[Node]:
    cfg = make_config(base, node_name)
    cfg = cfg.model_copy(update={"images": cfg.images.model_copy(update={"allowed": (BB_IMAGE, "berth/absent:1")})})
    n = Node(cfg)
    yield n
    n.close()


BAD: list[tuple[str, WorkerSpec, type[BerthError], str]] = [
    ("image not allowed", worker("w-bad1", "pass", image="evil/miner:1"), PolicyError, "image"),
    ("image allowed but absent", worker("w-bad2", "pass", image="berth/absent:1"), LaunchError,
     "launch failed at image"),
    ("root", worker("w-bad3", "pass", user="root"), IdentityError, "user"),
    ("unknown user", worker("w-bad4", "pass", user="berth-nobody"), IdentityError, "user"),
    ("system user", worker("w-bad5", "pass", user="daemon"), IdentityError, "user"),
    ("more cpu than the node", worker("w-bad6", "pass", cpu_percent=100_000), PolicyError, "cpu_percent"),
    ("a core the node lacks", worker("w-bad7", "pass", cores=(4096,)), PolicyError, "cores"),
    ("pids above the node's max", worker("w-bad8", "pass", pids_limit=10**6), PolicyError, "pids_limit"),
    ("a worker id taken", worker("w-good", "pass", port=6799), PolicyError, "worker_id"),
    ("a name another node's container holds", worker("w-held", "pass"), LaunchError, "launch failed at create"),
]


def test_bad_requests_through_the_node_leave_nothing_behind(strict_node: Node) -> None:
    cfg = strict_node.config
    strict_node.launch(worker("w-good", "pass"), on_exit=lambda r: None)
    assert strict_node.wait("w-good", WAIT).exit_code == 0
    # container names are engine-wide: a container of another node already holds this one
    other = docker.APIClient(base_url=SOCKET, version="auto")
    held = other.create_container(BB_IMAGE, "true", name="w-held", labels={"berth.node": "someone-else"})
    dirs = (cfg.node.local_dir, cfg.node.log_dir, cfg.state_dir)
    before, workers_before = snapshot(*dirs), strict_node.ps(detail=True)
    assert before and [w.worker_id for w in workers_before] == ["w-good"]
    for case, spec, kind, words in BAD:
        with pytest.raises(BerthError) as info:
            strict_node.launch(spec, on_exit=lambda r: None)
        assert type(info.value) is kind, f"{case}: {info.value!r}"
        assert str(info.value).startswith(words), f"{case}: {info.value}"
        assert snapshot(*dirs) == before, case
        assert strict_node.ps(detail=True) == workers_before, case
    assert not Path(cfg.node.local_dir, "workers", "w-held").exists()
    other.remove_container(held["Id"], force=True)
