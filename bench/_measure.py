"""The measurements. Each takes launchers and returns plain numbers; nothing here prints.

- sequential launch + exit detection: one worker at a time; launch latency = the worker's t0
  stamp minus the time of the launch call; after ``settle`` s (so every launcher's watcher is in
  place) the bench releases the worker, which stamps t1 and exits; exit detection = the time the
  exit callback runs minus t1.
- burst: N workers launched at once from N already-started threads; throughput = the last t0
  minus the moment the threads were let go.
- memory: time of one memory reading of a running worker.
- watch (in a child process, ``watch_child``): the launcher's threads, helper processes, RSS and
  CPU seconds with N running workers, sampled as they are launched (to show how it grows).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ._common import (
    NAME_PREFIX,
    TAGS,
    BenchError,
    cpu_ns,
    descendants,
    now_ns,
    proc_info,
    pss_kb,
    read_pidfile,
    read_stamp,
    release,
)
from ._launchers import Launcher, make_spec

Tick = Callable[[str], None]


def _noop(_: str) -> None:
    pass


class Exits:
    """The exit callback of one launcher: records when and with what each worker's exit arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at: dict[str, int] = {}
        self.code: dict[str, int] = {}
        self._events: dict[str, threading.Event] = {}

    def expect(self, worker_id: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(worker_id, threading.Event())

    def __call__(self, worker_id: str, code: int) -> None:
        t = now_ns()
        with self._lock:
            if worker_id in self.at:
                return
            self.at[worker_id] = t
            self.code[worker_id] = code
            ev = self._events.setdefault(worker_id, threading.Event())
        ev.set()


class Ids:
    """Worker ids: bnch-<run>-<launcher tag><phase>-<n>; ports cycle through 6700…7699."""

    def __init__(self, run: str) -> None:
        self.run = run
        self._n = 0
        self._lock = threading.Lock()

    def next(self, launcher: str, phase: str) -> tuple[str, int]:
        with self._lock:
            self._n += 1
            n = self._n
        return f"{NAME_PREFIX}{self.run}-{TAGS[launcher]}{phase}-{n}", 6700 + n % 1000


@dataclass
class SeqSample:
    launch_ms: float
    call_ms: float
    """How long the launch call itself took to return."""
    exit_ms: float


def one_sample(launcher: Launcher, exits: Exits, ids: Ids, settle: float, timeout: float = 60.0) -> SeqSample:
    wid, port = ids.next(launcher.name, "l")
    spec = make_spec(wid, port)
    died = exits.expect(wid)
    root = launcher.worker_root(wid)
    try:
        t_call = now_ns()
        launcher.launch(spec, exits)
        t_ret = now_ns()
        t0 = read_stamp(root / "t0", timeout, died)
        time.sleep(settle)
        release(root / "go")
        if not died.wait(timeout):
            raise BenchError(f"{launcher.name}: no exit callback for {wid} within {timeout:.0f}s")
        t1 = read_stamp(root / "t1", 5.0)
        return SeqSample((t0 - t_call) / 1e6, (t_ret - t_call) / 1e6, (exits.at[wid] - t1) / 1e6)
    finally:
        launcher.remove(wid)


def sequential(launchers: dict[str, Launcher], exits: dict[str, Exits], ids: Ids, n: int, warmup: int,
               settle: float, tick: Tick = _noop) -> dict[str, list[SeqSample]]:
    """``warmup`` + ``n`` rounds; each round launches one worker with every launcher in turn,
    so that slow drifts of the machine touch every launcher alike. Warm-up rounds are dropped."""
    out: dict[str, list[SeqSample]] = {name: [] for name in launchers}
    for i in range(warmup + n):
        order = list(launchers)
        if i % 2:
            order.reverse()
        for name in order:
            s = one_sample(launchers[name], exits[name], ids, settle)
            if i >= warmup:
                out[name].append(s)
            tick(name)
    return out


@dataclass
class Burst:
    total_s: float
    """From letting the N launch threads go to the last worker's t0 stamp."""
    calls_s: float
    """Until the last launch call returned."""
    running_at_s: list[float]
    """Each worker's t0, in seconds after the start, sorted."""
    exit_ms: list[float] = field(default_factory=list)
    """Exit detection of the N workers, released one right after the other."""


def _remove_all(launcher: Launcher, worker_ids: list[str], parallel: int = 8) -> None:
    with ThreadPoolExecutor(parallel) as pool:
        for f in [pool.submit(launcher.remove, w) for w in worker_ids]:
            with contextlib.suppress(Exception):
                f.result()


def launch_many(launcher: Launcher, exits: Exits, specs: list[Any]) -> tuple[int, int]:
    """Launch every spec at once, each from its own thread started beforehand; returns
    (start ns, ns when the last call returned)."""
    gate = threading.Event()
    ready = threading.Barrier(len(specs) + 1)
    errors: list[BaseException] = []

    def go(spec: Any) -> None:
        ready.wait()
        gate.wait()
        try:
            launcher.launch(spec, exits)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,), name="bench-launch", daemon=True) for s in specs]
    for t in threads:
        t.start()
    ready.wait()
    t_start = now_ns()
    gate.set()
    for t in threads:
        t.join()
    t_calls = now_ns()
    if errors:
        raise BenchError(f"{launcher.name}: {len(errors)} of {len(specs)} launches failed; first: {errors[0]!r}")
    return t_start, t_calls


def burst(launcher: Launcher, exits: Exits, ids: Ids, n: int, timeout: float = 300.0) -> Burst:
    pairs = [ids.next(launcher.name, "t") for _ in range(n)]
    specs = [make_spec(w, p) for w, p in pairs]
    wids = [w for w, _ in pairs]
    events = {w: exits.expect(w) for w in wids}
    try:
        t_start, t_calls = launch_many(launcher, exits, specs)
        t0 = {w: read_stamp(launcher.worker_root(w) / "t0", timeout, events[w]) for w in wids}
        result = Burst((max(t0.values()) - t_start) / 1e9, (t_calls - t_start) / 1e9,
                       sorted((v - t_start) / 1e9 for v in t0.values()))
        time.sleep(1.0)  # every watcher in place
        for w in wids:
            release(launcher.worker_root(w) / "go")
        for w in wids:
            if not events[w].wait(timeout):
                raise BenchError(f"{launcher.name}: no exit callback for {w}")
        for w in wids:
            t1 = read_stamp(launcher.worker_root(w) / "t1", 5.0)
            result.exit_ms.append((exits.at[w] - t1) / 1e6)
        return result
    finally:
        _remove_all(launcher, wids)


@dataclass
class Memory:
    per_call_us: list[float]
    berth_cgroup_read_us: list[float] = field(default_factory=list)
    """berth only: the cgroup file read alone (berth._linux.cgroup.memory_usage(pid)), without the lookup."""


def memory(launcher: Launcher, exits: Exits, ids: Ids, iters: int, timeout: float = 60.0) -> Memory:
    wid, port = ids.next(launcher.name, "m")
    died = exits.expect(wid)
    root = launcher.worker_root(wid)
    try:
        launcher.launch(make_spec(wid, port), exits)
        read_stamp(root / "t0", timeout, died)
        launcher.memory_read(wid)  # first call: caches, connections
        times = []
        for _ in range(iters):
            t = time.perf_counter_ns()
            launcher.memory_read(wid)
            times.append((time.perf_counter_ns() - t) / 1e3)
        out = Memory(times)
        if launcher.name == "berth":
            from berth._linux.cgroup import memory_usage

            pid = launcher.node.inspect(wid).pid  # type: ignore[attr-defined]
            for _ in range(max(iters, 1000)):
                t = time.perf_counter_ns()
                memory_usage(pid)
                out.berth_cgroup_read_us.append((time.perf_counter_ns() - t) / 1e3)
        release(root / "go")
        died.wait(timeout)
        return out
    finally:
        launcher.remove(wid)


# ------------------------------------------------------------------------------- watching cost


@dataclass
class WatchPoint:
    workers: int
    threads: int
    """The launcher process's threads beyond its baseline (taken before the launcher existed)."""
    children: int
    """Live descendant processes of the launcher process that are not workers."""
    helper_threads: int
    rss_mb: float
    """The launcher process's RSS plus its helper processes' RSS."""
    pss_mb: float


@dataclass
class Watch:
    launcher: str
    baseline_threads: int
    baseline_rss_mb: float
    ramp: list[WatchPoint]
    idle_s: float
    idle_cpu_s: float
    """CPU seconds (user+system) of the launcher process and its helpers over the idle window."""
    engine_idle_cpu_s: float | None
    self_rss_mb: float
    monitor_rss_mb: float | None = None
    """berth-shim's own RSS (berth on runc), with every worker running."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _point(me: int, n: int, base_threads: int, workers: set[int],
           monitors: list[int] | None = None) -> tuple[WatchPoint, float]:
    """``monitors``: helper processes that are not descendants (berth-shim), counted as helpers."""
    info = proc_info(me)
    assert info is not None
    helpers = [h for h in (proc_info(p) for p in [*descendants(me, workers), *(monitors or [])]) if h is not None]
    rss_kb = info.rss_kb + sum(h.rss_kb for h in helpers)
    pss = pss_kb(me) + sum(pss_kb(h.pid) for h in helpers)
    return WatchPoint(n, info.threads - base_threads, len(helpers), sum(h.threads for h in helpers),
                      round(rss_kb / 1024, 1), round(pss / 1024, 1)), info.rss_kb / 1024


def _cpu(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        ns = cpu_ns(pid)
        if ns is not None:
            out[pid] = ns
    return out


def _delta_s(before: dict[int, int], after: dict[int, int]) -> float:
    return sum(after[p] - before[p] for p in after if p in before) / 1e9


def ramp_sizes(n: int) -> list[int]:
    """Where the watching cost is sampled while workers are added: 1, 10, 20, … n."""
    return sorted({1, *range(10, n + 1, 10), n})


def watch_child(make: Callable[[], Launcher], n: int, idle: float, ids: Ids, engine_pidfiles: list[str],
                tick: Tick = _noop) -> Watch:
    """Run inside a process of its own: launch ``n`` workers, sample the cost as they come, then
    measure ``idle`` seconds of doing nothing but watching them."""
    me = os.getpid()
    base = proc_info(me)
    assert base is not None
    launcher = make()
    exits = Exits()
    wids: list[str] = []
    ramp: list[WatchPoint] = []
    try:
        done = 0
        for size in ramp_sizes(n):
            k = size - done
            pairs = [ids.next(launcher.name, "w") for _ in range(k)]
            wids += [w for w, _ in pairs]
            launch_many(launcher, exits, [make_spec(w, p) for w, p in pairs])
            for w, _ in pairs:
                read_stamp(launcher.worker_root(w) / "t0", 120.0, exits.expect(w))
            done += k
            time.sleep(1.0)  # every watcher started and connected
            point, _ = _point(me, done, base.threads, launcher.worker_pids(), launcher.monitor_pids())
            ramp.append(point)
            tick(f"{done}/{n}")
        time.sleep(1.0)
        workers = launcher.worker_pids()
        engine = [p for p in (read_pidfile(f) for f in engine_pidfiles) if p is not None]
        mine = [me, *descendants(me, workers), *launcher.monitor_pids()]
        eng0, cpu0 = _cpu(engine), _cpu(mine)
        t0 = time.monotonic()
        time.sleep(idle)
        elapsed = time.monotonic() - t0
        cpu1, eng1 = _cpu(mine), _cpu(engine)
        idle_cpu = _delta_s(cpu0, cpu1)
        engine_cpu = _delta_s(eng0, eng1) if eng0 else None
        final, self_rss = _point(me, n, base.threads, workers, launcher.monitor_pids())
        if ramp and ramp[-1].workers == n:
            ramp[-1] = final
        monitors = [m for m in (proc_info(p) for p in launcher.monitor_pids()) if m is not None]
        return Watch(launcher.name, base.threads, round(base.rss_kb / 1024, 1), ramp, round(elapsed, 2),
                     round(idle_cpu, 4), None if engine_cpu is None else round(engine_cpu, 4), round(self_rss, 1),
                     round(sum(m.rss_kb for m in monitors) / 1024, 1) if monitors else None)
    finally:
        _remove_all(launcher, wids)
        launcher.close()

