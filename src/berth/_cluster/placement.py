"""Placing workers on nodes: pure, deterministic, resource-aware first fit.

A pass keeps what already runs where it is (a worker is never moved because a better spot
appeared), updates a worker in place when its topology changed and it still fits, drops the
workers of removed topologies, replaces the workers of dead nodes where another node has room
(the others stay in their node's document: a node that comes back keeps running them), and
places what is missing. Every topology's shrink comes first, so one pass sees every port and
every share of cpu and memory it frees, whatever the order of the names. Each new worker
goes to the first node, in the order below, with a free port and enough free memory and cpu
(and, on a node that declares NUMA zones, a zone with enough of both: the worker is then pinned
to that zone's cores and memory node, as Storm's supervisor does). Nodes are tried holding the
fewest workers of the topology first, then the most free memory, then by name, so a topology
spreads over the cluster instead of filling one node.

Worker ids are ``<topology>-<n>`` with ``n`` from a per-topology counter that only grows: a
worker moved off a dead node gets a new id, so it can never be confused with the copy that may
still run there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._core.docfile import read_document
from .._core.spec import ID_PATTERN, WorkerSpec
from .._core.validation import raise_validation
from .._exceptions import ClusterError
from .capacity import Capacity
from .documents import tuplify

MAX_TOPOLOGIES = 1000
MAX_WORKERS_PER_TOPOLOGY = 1000
MAX_WORKERS = 10000
MAX_TOPOLOGY_ID = 100
"""Leaves room for ``-<n>`` within the 128 characters of a worker id."""


class Topology(BaseModel):
    """One topology: ``workers`` copies of one worker request."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    user: str = Field(min_length=1, max_length=64)
    command: tuple[str, ...] = Field(min_length=1)
    workers: int = Field(ge=0, le=MAX_WORKERS_PER_TOPOLOGY)
    image: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cpu_percent: int = Field(default=100, ge=1, le=100 * 4096)
    memory_mb: int = Field(default=1024, ge=6, le=1 << 30)
    pids_limit: int | None = Field(default=None, ge=1)
    max_unavailable: int | str = "25%"
    """A rolling replacement's bound: at most this many of the topology's workers down at a time
    (a count, or a percentage of ``workers`` rounded down, at least one)."""

    @field_validator("max_unavailable")
    @classmethod
    def _unavailable(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= MAX_WORKERS_PER_TOPOLOGY:
            raise ValueError(f"must be a count from 1 to {MAX_WORKERS_PER_TOPOLOGY}, or a percentage like 25%")
        if isinstance(v, str) and not (re.fullmatch(r"[0-9]{1,3}%", v) and 1 <= int(v[:-1]) <= 100):
            raise ValueError("must be a percentage from 1% to 100%, or a count like 2")
        return v

    def unavailable(self) -> int:
        """How many workers a rolling replacement may have down at a time."""
        if isinstance(self.max_unavailable, int):
            return self.max_unavailable
        return max(1, self.workers * int(self.max_unavailable[:-1]) // 100)


class Topologies(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    topologies: dict[str, Topology] = Field(max_length=MAX_TOPOLOGIES)

    @field_validator("topologies")
    @classmethod
    def _ids(cls, v: dict[str, Topology]) -> dict[str, Topology]:
        for tid in v:
            if not ID_PATTERN.fullmatch(tid) or len(tid) > MAX_TOPOLOGY_ID:
                raise ValueError(f"{tid!r} must be 2-{MAX_TOPOLOGY_ID} of A-Z a-z 0-9 '_' '.' '-'")
        total = sum(t.workers for t in v.values())
        if total > MAX_WORKERS:
            raise ValueError(f"asks for {total} workers, more than {MAX_WORKERS}")
        return v


def parse_topologies(data: Any) -> dict[str, Topology]:
    try:
        return dict(Topologies.model_validate(tuplify(data)).topologies)
    except ValidationError as exc:
        raise raise_validation(exc, ClusterError) from None


ZoneChoice = tuple[int, tuple[int, ...]]
"""(zone id, its cores)"""


def read_topologies(path: str) -> dict[str, Topology]:
    """A topologies file (YAML or JSON): ``topologies: {id: {user, command, workers, …}}``."""
    data = read_document(path, "topologies", ClusterError)
    if not isinstance(data, dict):
        raise ClusterError("topologies", f"{path} must hold a mapping topologies: {{id: {{…}}}}")
    return parse_topologies(data)


def worker_spec(tid: str, topo: Topology, worker_id: str, port: int, zone: ZoneChoice | None) -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, topology_id=tid, port=port, user=topo.user, command=topo.command,
                      env=dict(topo.env), image=topo.image, cpu_percent=topo.cpu_percent, memory_mb=topo.memory_mb,
                      pids_limit=topo.pids_limit, cores=zone[1] if zone else None, numa_node=zone[0] if zone else None)


def ordinal(worker_id: str) -> int:
    tail = worker_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


@dataclass
class NodeInput:
    name: str
    capacity: Capacity | None
    """None for a node that never registered: nothing new goes there."""
    live: bool
    dead: bool = False
    """Gone well past the session timeout: its workers move."""
    workers: list[WorkerSpec] = field(default_factory=list)
    ready: frozenset[str] = frozenset()
    """Workers the node reports running from the spec its document names (a rolling replacement
    counts the others as down)."""
    draining: bool = False
    """Being removed (``remove-node --drain``): its workers stay in its document but no longer count
    for their topologies, which get replacements elsewhere; nothing new goes there."""


@dataclass
class Placement:
    docs: dict[str, list[WorkerSpec]]
    counters: dict[str, int]
    unplaced: dict[str, int] = field(default_factory=dict)
    moved: list[tuple[str, str]] = field(default_factory=list)
    """(old worker id, node it left)"""
    rolling: dict[str, int] = field(default_factory=dict)
    """Workers left on their old request by a rolling replacement: a later pass updates them,
    once the ones being replaced run."""
    stranded: dict[str, int] = field(default_factory=dict)
    """Workers of dead nodes that no other node has room for: they stay in their node's document
    (a node that comes back keeps running them), and move once there is room."""


class _Free:
    def __init__(self, cap: Capacity) -> None:
        self.cap = cap
        self.cpu, self.mem = cap.cpu_percent, cap.memory_mb
        self.ports = list(cap.ports)
        self.zones = {z.id: [z.cpu_percent, z.memory_mb] for z in cap.zones}

    def take(self, spec: WorkerSpec) -> None:
        self.cpu -= spec.cpu_percent or 0
        self.mem -= spec.memory_mb or 0
        if spec.port in self.ports:
            self.ports.remove(spec.port)
        if spec.numa_node is not None and spec.numa_node in self.zones:
            self.zones[spec.numa_node][0] -= spec.cpu_percent or 0
            self.zones[spec.numa_node][1] -= spec.memory_mb or 0

    def give(self, spec: WorkerSpec) -> None:
        self.cpu += spec.cpu_percent or 0
        self.mem += spec.memory_mb or 0
        if spec.port in self.cap.ports and spec.port not in self.ports:
            self.ports.append(spec.port)
            self.ports.sort(key=self.cap.ports.index)
        if spec.numa_node is not None and spec.numa_node in self.zones:
            self.zones[spec.numa_node][0] += spec.cpu_percent or 0
            self.zones[spec.numa_node][1] += spec.memory_mb or 0

    def fit(self, topo: Topology) -> tuple[int, ZoneChoice | None] | None:
        """(port, zone) for one more worker of ``topo``, or None."""
        if not self.ports or self.cpu < topo.cpu_percent or self.mem < topo.memory_mb:
            return None
        if not self.cap.zones:
            return self.ports[0], None
        fits = [z for z in self.cap.zones
                if self.zones[z.id][0] >= topo.cpu_percent and self.zones[z.id][1] >= topo.memory_mb]
        if not fits:
            return None
        best = max(fits, key=lambda z: (self.zones[z.id][1], -z.id))
        return self.ports[0], (best.id, best.cores)


def _same_request(w: WorkerSpec, tid: str, topo: Topology) -> bool:
    return (w.topology_id, w.user, w.command, w.env, w.image, w.cpu_percent, w.memory_mb, w.pids_limit) == \
           (tid, topo.user, topo.command, dict(topo.env), topo.image, topo.cpu_percent, topo.memory_mb,
            topo.pids_limit)


def place(topologies: Mapping[str, Topology], nodes: list[NodeInput], counters: Mapping[str, int]) -> Placement:
    nodes = sorted(nodes, key=lambda n: n.name)
    free = {n.name: _Free(n.capacity) for n in nodes if n.capacity is not None}
    counters = dict(counters)
    out = Placement(docs={n.name: [] for n in nodes}, counters=counters)
    kept: dict[str, list[tuple[str, WorkerSpec]]] = {tid: [] for tid in topologies}
    orphans: dict[str, list[tuple[str, WorkerSpec]]] = {tid: [] for tid in topologies}
    """Workers of dead nodes: replaced elsewhere where there is room, else left where they are."""
    seen: set[str] = set()
    for n in nodes:
        for w in n.workers:
            counters[w.topology_id] = max(counters.get(w.topology_id, 0), ordinal(w.worker_id))
            topo = topologies.get(w.topology_id)
            if topo is None or w.worker_id in seen:
                continue
            seen.add(w.worker_id)
            if n.draining:
                out.docs[n.name].append(w)
                continue
            if n.name in free:
                if w.port not in free[n.name].cap.ports:
                    continue  # the node no longer offers that port: placed again below
                free[n.name].take(w)
            (orphans if n.dead else kept)[w.topology_id].append((n.name, w))
    # Every shrink first, so that what one topology gives back is there for all the others.
    for tid, topo in topologies.items():
        _shrink(tid, topo, orphans[tid], kept[tid], nodes, free)
    ready = {n.name: n.ready for n in nodes if n.live and not n.dead and not n.draining}
    for tid, topo in topologies.items():
        _roll(tid, topo, kept[tid], ready, free, out)
    for tid, topo in sorted(topologies.items()):
        for name, w in kept[tid]:
            out.docs[name].append(w)
        for dead, w in orphans[tid]:  # a replacement elsewhere, or it stays (it may run there still)
            spot = _first_fit(tid, topo, nodes, free, out.docs)
            if spot is None:
                out.docs[dead].append(w if _same_request(w, tid, topo) else _update_in_place(w, topo, None) or w)
                out.stranded[tid] = out.stranded.get(tid, 0) + 1
                continue
            if dead in free:
                free[dead].give(w)
            out.moved.append((w.worker_id, dead))
            _add(out, tid, topo, spot, free)
        for _ in range(topo.workers - len(kept[tid]) - len(orphans[tid])):
            spot = _first_fit(tid, topo, nodes, free, out.docs)
            if spot is None:
                out.unplaced[tid] = out.unplaced.get(tid, 0) + 1
            else:
                _add(out, tid, topo, spot, free)
    for docs in out.docs.values():
        docs.sort(key=lambda w: (w.topology_id, ordinal(w.worker_id), w.worker_id))
    return out


def _shrink(tid: str, topo: Topology, orphans: list[tuple[str, WorkerSpec]], kept: list[tuple[str, WorkerSpec]],
            nodes: list[NodeInput], free: dict[str, _Free]) -> None:
    """Down to ``topo.workers``: a dead node's first (nothing then replaces them), then those on
    nodes that are not live, then those on an old request, then the newest."""
    want = topo.workers
    orphans.sort(key=lambda nw: ordinal(nw[1].worker_id))
    kept.sort(key=lambda nw: (not _is_live(nodes, nw[0]), not _same_request(nw[1], tid, topo),
                              ordinal(nw[1].worker_id)))
    while orphans and len(orphans) + len(kept) > want:
        name, w = orphans.pop()
        if name in free:
            free[name].give(w)
    for name, w in kept[want:]:
        if name in free:
            free[name].give(w)
    del kept[want:]


def _roll(tid: str, topo: Topology, kept: list[tuple[str, WorkerSpec]], ready: Mapping[str, frozenset[str]],
          free: dict[str, _Free], out: Placement) -> None:
    """Update the workers on an old request, at most ``topo.unavailable()`` down at a time: a
    worker not running the spec its document names is down (being replaced, crashed, on a node
    away, or not placed yet); one that is down anyway is updated at once. One that no longer fits
    where it is leaves ``kept`` and is placed again."""
    up = sum(1 for name, w in kept if w.worker_id in ready.get(name, ()))
    budget = topo.unavailable() - (topo.workers - up)
    waiting, after = 0, []
    for name, w in kept:
        new: WorkerSpec | None = w
        if _same_request(w, tid, topo):
            pass
        elif w.worker_id in ready.get(name, ()) and budget <= 0:
            waiting += 1
        else:
            budget -= w.worker_id in ready.get(name, ())
            new = _update_in_place(w, topo, free.get(name))
        if new is not None:
            after.append((name, new))
    kept[:] = after
    if waiting:
        out.rolling[tid] = waiting


def _add(out: Placement, tid: str, topo: Topology, spot: tuple[str, int, ZoneChoice | None],
         free: dict[str, _Free]) -> None:
    name, port, zone = spot
    out.counters[tid] = out.counters.get(tid, 0) + 1
    spec = worker_spec(tid, topo, f"{tid}-{out.counters[tid]}", port, zone)
    free[name].take(spec)
    out.docs[name].append(spec)


def _is_live(nodes: list[NodeInput], name: str) -> bool:
    return any(n.name == name and n.live for n in nodes)


def _update_in_place(w: WorkerSpec, topo: Topology, free: _Free | None) -> WorkerSpec | None:
    """The topology changed: the same worker id and port with the new request, if it still fits.

    None when it does not (the caller places it again); its old share is then already given back.
    """
    zone = (w.numa_node, w.cores) if w.numa_node is not None and w.cores else None
    if free is None:  # a node that is away: keep its worker where it is, with the new request
        return worker_spec(w.topology_id, topo, w.worker_id, w.port, zone)
    free.give(w)
    if free.cap.zones:
        z = w.numa_node if w.numa_node is not None else -1
        if z not in free.zones or free.zones[z][0] < topo.cpu_percent or free.zones[z][1] < topo.memory_mb:
            return None
        zone = (z, next(x.cores for x in free.cap.zones if x.id == z))
    if free.cpu < topo.cpu_percent or free.mem < topo.memory_mb:
        return None
    new = worker_spec(w.topology_id, topo, w.worker_id, w.port, zone)
    free.take(new)
    return new


def _first_fit(tid: str, topo: Topology, nodes: list[NodeInput], free: dict[str, _Free],
               docs: dict[str, list[WorkerSpec]]) -> tuple[str, int, ZoneChoice | None] | None:
    candidates = [n.name for n in nodes if n.live and not n.dead and not n.draining and n.name in free]
    candidates.sort(key=lambda name: (sum(1 for w in docs[name] if w.topology_id == tid), -free[name].mem, name))
    for name in candidates:
        got = free[name].fit(topo)
        if got is not None:
            return name, got[0], got[1]
    return None
