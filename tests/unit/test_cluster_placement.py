"""Placement, exactly: first fit by spread, kept workers stay, dead nodes' workers move under new ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth._cluster.capacity import Capacity
from berth._cluster.placement import NodeInput, Topology, parse_topologies, place, worker_spec
from berth._core.clusterconfig import NumaZone as Zone
from berth._core.spec import WorkerSpec
from berth._exceptions import ClusterError

CMD = ("python3", "-c", "pass")


def cap(cpu: int = 400, mem: int = 1000, ports: tuple[int, ...] = (6700, 6701, 6702), zones: tuple[Zone, ...] = ()
        ) -> Capacity:
    return Capacity(cpu_percent=cpu, memory_mb=mem, ports=ports, zones=zones)


def topo(n: int, cpu: int = 100, mem: int = 100, user: str = "alice") -> Topology:
    return Topology(user=user, command=CMD, workers=n, cpu_percent=cpu, memory_mb=mem)


def ids(docs: dict[str, list[WorkerSpec]]) -> dict[str, list[str]]:
    return {k: [w.worker_id for w in v] for k, v in docs.items()}


def test_a_topology_spreads_over_the_nodes_and_takes_the_lowest_free_port() -> None:
    nodes = [NodeInput("b", cap(), True), NodeInput("a", cap(), True), NodeInput("c", cap(), True)]
    p = place({"wc": topo(4)}, nodes, {})
    assert ids(p.docs) == {"a": ["wc-1", "wc-4"], "b": ["wc-2"], "c": ["wc-3"]}
    assert [w.port for w in p.docs["a"]] == [6700, 6701]
    assert p.counters == {"wc": 4} and p.unplaced == {}


def test_kept_workers_stay_and_only_the_missing_are_placed() -> None:
    t = topo(3)
    running = [worker_spec("wc", t, "wc-7", 6701, None)]
    nodes = [NodeInput("a", cap(), True, workers=running), NodeInput("b", cap(), True)]
    p = place({"wc": t}, nodes, {"wc": 7})
    assert ids(p.docs) == {"a": ["wc-7", "wc-9"], "b": ["wc-8"]}
    assert p.docs["a"][0] == running[0]
    assert p.docs["a"][1].port == 6700  # the port wc-7 holds is not given twice


def test_resources_decide_and_what_fits_nowhere_is_reported() -> None:
    nodes = [NodeInput("a", cap(cpu=250, mem=1000), True), NodeInput("b", cap(cpu=400, mem=150), True)]
    p = place({"big": topo(3, cpu=100, mem=400)}, nodes, {})
    assert ids(p.docs) == {"a": ["big-1", "big-2"], "b": []}
    assert p.unplaced == {"big": 1}


def test_nodes_not_live_get_nothing_new_but_keep_their_workers() -> None:
    t = topo(2)
    kept = worker_spec("wc", t, "wc-1", 6700, None)
    nodes = [NodeInput("a", cap(), False, workers=[kept]), NodeInput("b", cap(), True), NodeInput("c", None, False)]
    p = place({"wc": t}, nodes, {"wc": 1})
    assert ids(p.docs) == {"a": ["wc-1"], "b": ["wc-2"], "c": []}
    assert p.moved == []


def test_a_dead_nodes_workers_move_under_new_ids_and_its_document_empties() -> None:
    t = topo(2)
    gone = [worker_spec("wc", t, "wc-1", 6700, None), worker_spec("wc", t, "wc-2", 6701, None)]
    nodes = [NodeInput("a", cap(), False, dead=True, workers=gone), NodeInput("b", cap(), True)]
    p = place({"wc": t}, nodes, {"wc": 2})
    assert ids(p.docs) == {"a": [], "b": ["wc-3", "wc-4"]}
    assert p.moved == [("wc-1", "a"), ("wc-2", "a")]


def test_shrinking_drops_workers_on_absent_nodes_first_then_the_newest() -> None:
    t = topo(2)
    nodes = [NodeInput("a", cap(), False, workers=[worker_spec("wc", t, "wc-1", 6700, None)]),
             NodeInput("b", cap(), True, workers=[worker_spec("wc", t, "wc-2", 6700, None),
                                                  worker_spec("wc", t, "wc-3", 6701, None)])]
    p = place({"wc": topo(1)}, nodes, {"wc": 3})
    assert ids(p.docs) == {"a": [], "b": ["wc-2"]}


def test_a_changed_topology_updates_workers_in_place_when_they_still_fit() -> None:
    old = topo(2, mem=100)
    nodes = [NodeInput("a", cap(mem=500), True, workers=[worker_spec("wc", old, "wc-1", 6700, None),
                                                         worker_spec("wc", old, "wc-2", 6701, None)])]
    p = place({"wc": topo(2, mem=200)}, nodes, {"wc": 2})
    assert [(w.worker_id, w.port, w.memory_mb) for w in p.docs["a"]] == [("wc-1", 6700, 200), ("wc-2", 6701, 200)]
    p = place({"wc": topo(2, mem=300)}, nodes, {"wc": 2})
    assert [(w.worker_id, w.memory_mb) for w in p.docs["a"]] == [("wc-1", 300)]
    assert p.unplaced == {"wc": 1}


def test_removed_topologies_go_and_duplicated_ids_are_kept_once() -> None:
    t = topo(1)
    w = worker_spec("wc", t, "wc-1", 6700, None)
    nodes = [NodeInput("a", cap(), True, workers=[w, worker_spec("old", t, "old-1", 6701, None)]),
             NodeInput("b", cap(), True, workers=[w])]
    p = place({"wc": t}, nodes, {})
    assert ids(p.docs) == {"a": ["wc-1"], "b": []}


def test_numa_zones_pin_each_worker_to_the_zone_with_the_most_free_memory() -> None:
    zones = (Zone(id=0, cores=(0, 1), memory_mb=300), Zone(id=1, cores=(2, 3), memory_mb=400))
    p = place({"wc": topo(4, cpu=100, mem=150)}, [NodeInput("a", cap(ports=(1, 2, 3, 4, 5), zones=zones), True)], {})
    got = [(w.worker_id, w.numa_node, w.cores) for w in p.docs["a"]]
    assert got == [("wc-1", 1, (2, 3)), ("wc-2", 0, (0, 1)), ("wc-3", 1, (2, 3)), ("wc-4", 0, (0, 1))]
    p = place({"wc": topo(1, cpu=100, mem=450)}, [NodeInput("a", cap(zones=zones), True)], {})
    assert p.unplaced == {"wc": 1}  # 700 MiB in all, but no one zone has 450


def test_topologies_file_errors_name_the_field() -> None:
    with pytest.raises(ClusterError) as e:
        parse_topologies({"topologies": {"wc": {"user": "alice", "command": ["x"], "workers": 5000}}})
    assert e.value.field == "topologies.wc.workers"
    with pytest.raises(ClusterError) as e:
        parse_topologies({"topologies": {"bad/id": {"user": "alice", "command": ["x"], "workers": 1}}})
    assert e.value.field == "topologies" and "bad/id" in e.value.reason
    with pytest.raises(ClusterError) as e:
        parse_topologies({"topologies": {"wc": {"user": "alice", "command": ["x"], "workers": 1, "cpus": 2}}})
    assert (e.value.field, e.value.reason) == ("topologies.wc.cpus", "unknown key")
    with pytest.raises(ClusterError, match="more than 10000"):
        parse_topologies({"topologies": {f"t{i}": {"user": "a", "command": ["x"], "workers": 1000}
                                         for i in range(11)}})


def test_a_topologies_file_above_the_bound_is_refused_not_cut(tmp_path: Path) -> None:
    """Read past 4 MiB and parsed, a file whose first 4 MiB are valid YAML would silently lose the
    topologies after them."""
    from berth._cluster.placement import read_topologies

    f = tmp_path / "topologies.yaml"
    one = "  {}: {{user: alice, command: [x], workers: 1}}\n"
    f.write_text("topologies:\n" + one.format("t1") + "#" * (4 * 1024 * 1024) + "\n" + one.format("t2"))
    with pytest.raises(ClusterError, match=r"^topologies: .* is larger than 4194304 bytes"):
        read_topologies(str(f))


def test_a_nodes_own_claim_is_capped_by_the_coordinators_per_node_maxima() -> None:
    """Issue 18 item 10: a node's self-declared capacity was taken as is (a node claiming 4096
    cores drew every worker of the cluster); the coordinator caps it with its own config."""
    from berth._cluster.capacity import capped
    from berth._core.clusterconfig import ClusterSection

    settings = ClusterSection(node_max_cpu_percent=800, node_max_memory_mb=4096, node_max_ports=2)
    claim = cap(cpu=100 * 4096, mem=1 << 30, ports=(6700, 6701, 6702, 6703))
    assert capped(claim, settings) == cap(cpu=800, mem=4096, ports=(6700, 6701))
    modest = cap(cpu=200, mem=1000, ports=(6700,))
    assert capped(modest, settings) == modest  # within the maxima: as declared
    defaults = ClusterSection()
    assert (defaults.node_max_cpu_percent, defaults.node_max_memory_mb, defaults.node_max_ports) == (
        100 * 256, 4 << 20, 256)
    p = place({"wc": topo(6)}, [NodeInput("liar", capped(claim, settings), True),
                                NodeInput("honest", modest, True)], {})
    assert ids(p.docs) == {"honest": ["wc-2"], "liar": ["wc-1", "wc-3"]} and p.unplaced == {"wc": 3}


def test_cluster_ps_shows_the_capped_offer_and_says_what_the_node_claimed() -> None:
    from berth._cli.cluster_views import cluster_rows
    from berth._cluster.admin import NodeView
    from berth._cluster.documents import Registration
    from berth._core.clusterconfig import ClusterSection

    reg = Registration(node="liar", berth_version="x", host="h", pid=1, pid_start=0, boot_id="b", started_at=0.0,
                       capacity=cap(cpu=100 * 4096, mem=1000, ports=(6700, 6701, 6702)))
    settings = ClusterSection(node_max_cpu_percent=800, node_max_ports=2)
    [node], _ = cluster_rows({"liar": NodeView("liar", live=reg)}, settings)
    assert node["capacity"] == {"cpu_percent": 800, "memory_mb": 1000, "ports": 2, "zones": 0}
    assert node["problems"] == ["claims cpu 409600%, 3 ports: capped by the coordinator's cluster.node_max_*"]


def test_one_pass_places_with_the_ports_its_shrinks_free_whatever_the_names() -> None:
    """``aa`` grows while ``zz`` shrinks on a full node: ``aa`` gets the ports ``zz`` gives back."""
    zz = topo(3)
    nodes = [NodeInput("a", cap(), True, workers=[worker_spec("zz", zz, f"zz-{i}", 6699 + i, None) for i in (1, 2, 3)])]
    p = place({"aa": topo(2), "zz": topo(1)}, nodes, {"zz": 3})
    assert ids(p.docs) == {"a": ["aa-1", "aa-2", "zz-1"]}
    assert [w.port for w in p.docs["a"]] == [6701, 6702, 6700]
    assert p.unplaced == {}


def test_a_dead_nodes_workers_that_fit_nowhere_else_stay_on_it() -> None:
    """Emptying its document would stop them when it comes back, and nothing would run instead."""
    t = topo(3)
    gone = [worker_spec("wc", t, f"wc-{i}", 6699 + i, None) for i in (1, 2, 3)]
    nodes = [NodeInput("a", cap(), False, dead=True, workers=gone), NodeInput("b", cap(ports=(6700,)), True)]
    p = place({"wc": t}, nodes, {"wc": 3})
    assert ids(p.docs) == {"a": ["wc-2", "wc-3"], "b": ["wc-4"]}
    assert p.moved == [("wc-1", "a")]
    assert p.stranded == {"wc": 2} and p.unplaced == {}
    # a coordinator that never saw the node live (no capacity known) keeps them the same way
    p = place({"wc": t}, [NodeInput("a", None, False, dead=True, workers=gone)], {"wc": 3})
    assert ids(p.docs) == {"a": ["wc-1", "wc-2", "wc-3"]} and p.stranded == {"wc": 3} and p.moved == []
    # a shrink drops the dead node's workers first: nothing to move, nothing stranded
    p = place({"wc": topo(1)}, nodes, {"wc": 3})
    assert ids(p.docs) == {"a": [], "b": ["wc-4"]} and p.stranded == {} and p.moved == [("wc-1", "a")]


def test_a_changed_topology_is_replaced_a_few_workers_at_a_time() -> None:
    """A rolling replacement: at most ``max_unavailable`` of a topology's workers down at a time
    (25% by default, at least one); workers that are down anyway change at once."""
    new = Topology(user="alice", command=CMD, workers=4, cpu_percent=100, memory_mb=100, env={"G": "2"})
    node = NodeInput("a", cap(ports=(6700, 6701, 6702, 6703)), True,
                     workers=[worker_spec("wc", topo(4), f"wc-{i}", 6699 + i, None) for i in (1, 2, 3, 4)])

    def step(ready: set[str], topology: Topology = new) -> list[str]:
        node.ready = frozenset(ready)
        p = place({"wc": topology}, [node], {"wc": 4})
        assert [w.worker_id for w in p.docs["a"]] == ["wc-1", "wc-2", "wc-3", "wc-4"] and p.unplaced == {}
        node.workers = p.docs["a"]
        waiting = sum(1 for w in p.docs["a"] if w.env != topology.env)
        assert p.rolling == ({"wc": waiting} if waiting else {})
        return [w.worker_id for w in p.docs["a"] if w.env == topology.env]

    everyone = {"wc-1", "wc-2", "wc-3", "wc-4"}
    assert step(everyone) == ["wc-1"]
    assert step(everyone - {"wc-1"}) == ["wc-1"]  # wc-1 is not running its new spec yet: nothing more
    assert step(everyone) == ["wc-1", "wc-2"]
    assert step({"wc-1", "wc-2"}) == ["wc-1", "wc-2", "wc-3", "wc-4"]  # wc-3 and wc-4 are down anyway
    newer = new.model_copy(update={"env": {"G": "3"}, "max_unavailable": "50%"})
    assert step(everyone, newer) == ["wc-1", "wc-2"]
    newest = new.model_copy(update={"env": {"G": "4"}, "max_unavailable": 3})
    assert step(everyone, newest) == ["wc-1", "wc-2", "wc-3"]


def test_max_unavailable_is_a_count_or_a_percentage() -> None:
    def parsed(v: object) -> Topology:
        return parse_topologies({"topologies": {"wc": {"user": "a", "command": ["x"], "workers": 15,
                                                       "max_unavailable": v}}})["wc"]

    assert [parsed(v).unavailable() for v in (1, 4, "25%", "10%", "100%")] == [1, 4, 3, 1, 15]
    for bad in (0, "0%", "101%", "25", "x%", -1):
        with pytest.raises(ClusterError) as e:
            parsed(bad)
        assert e.value.field == "topologies.wc.max_unavailable", bad


def test_a_draining_node_keeps_its_workers_while_other_nodes_get_their_replacements() -> None:
    t = topo(2)
    nodes = [NodeInput("a", cap(), True, workers=[worker_spec("wc", t, "wc-1", 6700, None),
                                                  worker_spec("wc", t, "wc-2", 6701, None)], draining=True),
             NodeInput("b", cap(), True)]
    p = place({"wc": t, "new": topo(1)}, nodes, {"wc": 2})
    assert ids(p.docs) == {"a": ["wc-1", "wc-2"], "b": ["new-1", "wc-3", "wc-4"]}
    assert p.unplaced == {} and p.moved == []
