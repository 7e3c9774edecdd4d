"""``python -m bench profile``: where berth's time goes, call by call.

Every Engine API request berth makes is timed (a wrapper around ``requests.Session.send``) and
filed under the step that made it: the launch call, ``Node.memory_usage``, and the handling of an
exit (from the engine's ``die`` event to berth's callback). The engine's own ``die`` timestamp
is read from a second, independent event subscription.
"""

from __future__ import annotations

import contextlib
import datetime
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from berth import ExitRecord, Node
from berth._runtimes.docker.runtime import DockerRuntime

from ._common import now_ns, read_stamp, release
from ._launchers import BerthLauncher, make_spec
from ._measure import Exits, Ids


class _ApiTimer:
    def __init__(self) -> None:
        self.step = ""
        self.calls: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._local = threading.local()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import requests

        orig = requests.Session.send
        timer = self

        def send(session: Any, req: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return orig(session, req, **kw)
            finally:
                step = getattr(timer._local, "step", "") or timer.step
                if step and threading.current_thread().name != "bench-die-listener":
                    parts = req.path_url.split("?")[0].split("/")[2:]
                    path = "/".join("<id>" if len(p) >= 40 else p for p in parts)
                    timer.calls[(step, f"{req.method} /{path}")].append((time.perf_counter() - t) * 1e3)

        requests.Session.send = send  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            requests.Session.send = orig  # type: ignore[method-assign]


def _rfc3339_ns(text: str) -> int:
    base, _, frac = text.rstrip("Z").partition(".")
    sec = int(datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.UTC).timestamp())
    return sec * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


def profile_berth(launcher: BerthLauncher, ids: Ids, n: int, url: str) -> dict[str, Any]:
    import docker

    timer = _ApiTimer()
    exits = Exits()
    die_at: dict[str, int] = {}
    got_event: dict[str, int] = {}
    records: dict[str, Any] = {}
    listener_api = docker.APIClient(base_url=url, version="auto")

    def listen() -> None:
        with contextlib.suppress(Exception):
            for ev in listener_api.events(decode=True, filters={"type": ["container"], "event": ["die"]}):
                die_at[ev["id"]] = int(ev["timeNano"])

    threading.Thread(target=listen, name="bench-die-listener", daemon=True).start()

    class TimedDocker(DockerRuntime):
        """Files every request of the node's watcher thread (it does nothing but exit handling)
        under the exit step, and notes when each exit record is ready: through the runtime's
        public ``exit_events``, so no private method is patched."""

        def exit_events(self) -> Iterator[ExitRecord | None]:
            timer._local.step = "exit (die event -> callback)"
            for item in super().exit_events():
                if item is not None:
                    got_event[item.container_id] = now_ns()
                yield item

    launcher.node.close()
    launcher.node = Node(launcher.config, runtime=TimedDocker(launcher.config), host=launcher.host)
    launch_ms: list[float] = []
    mem_us: list[float] = []
    split: list[dict[str, float]] = []

    def on_exit(rec: Any) -> None:
        records[rec.worker_id] = rec
        exits(rec.worker_id, rec.exit_code)

    try:
        with timer.installed():
            for i in range(n + 1):
                wid, port = ids.next("berth", "p")
                died = exits.expect(wid)
                spec = make_spec(wid, port)
                timer.step = "launch"
                t = time.perf_counter()
                launcher.node.launch(spec, on_exit=on_exit)
                took = (time.perf_counter() - t) * 1e3
                timer.step = ""
                root = launcher.worker_root(wid)
                t1_file = root / "t1"
                read_stamp(root / "t0", 60, died)
                timer.step = "memory_usage"
                for _ in range(20):
                    t = time.perf_counter()
                    launcher.node.memory_usage(wid)
                    mem_us.append((time.perf_counter() - t) * 1e6)
                timer.step = ""
                time.sleep(0.3)
                release(root / "go")
                died.wait(60)
                t1 = read_stamp(t1_file, 5)
                time.sleep(0.05)
                rec = records[wid]
                if i == 0:  # warm-up
                    timer.calls.clear()
                    mem_us.clear()
                else:
                    launch_ms.append(took)
                    cid = rec.container_id
                    split.append({
                        "exit_to_finished_at_ms": (_rfc3339_ns(rec.finished_at) - t1) / 1e6 if rec.finished_at else -1,
                        "exit_to_die_event_ms": (die_at.get(cid, 0) - t1) / 1e6,
                        "die_event_to_berth_ms": (got_event.get(cid, 0) - die_at.get(cid, 0)) / 1e6,
                        "die_event_to_callback_ms": (exits.at[wid] - die_at.get(cid, 0)) / 1e6,
                        "total_ms": (exits.at[wid] - t1) / 1e6,
                    })
                launcher.remove(wid)
    finally:
        listener_api.close()
    per_step = {"launch": n, "memory_usage": 20 * n, "exit (die event -> callback)": n}
    calls = []
    for (step, what), ms in sorted(timer.calls.items(), key=lambda kv: (kv[0][0], -sum(kv[1]))):
        calls.append({"step": step, "request": what, "per_call": round(len(ms) / per_step.get(step, n), 2),
                      "p50_ms": round(statistics.median(ms), 2), "mean_ms": round(statistics.fmean(ms), 2)})
    return {
        "launch_call_p50_ms": round(statistics.median(launch_ms), 1),
        "memory_usage_p50_us": round(statistics.median(mem_us), 1),
        "requests": calls,
        "exit_split_p50": {k: round(statistics.median(s[k] for s in split), 1) for k in split[0]},
    }
