"""python -m bench.supervisor — a supervised node at scale, through `berth serve` on the real engine.

    python -m bench.supervisor [--workers 40] [--grace 10] [--parallel-stops N] [--json]

Needs root and the project's engine (``scripts/engine``; started if not running, then left
running). One ``berth serve`` process (its own node name, state under /var/lib/berth-bench), fed
through its API socket; the engine's listing is polled every 20 ms for what it runs:

* **all running**: from the ``PUT /assignments`` of ``--workers`` workers to the moment the engine
  lists every one of them running;
* **cost**: threads and RSS of the ``serve`` process once they run (read from /proc);
* **all removed**: from ``PUT {workers: []}`` to an empty listing (workers that exit on SIGTERM);
* **stubborn removal**: the same for workers that ignore SIGTERM, with a ``--grace`` s grace period
  (each stop takes the whole grace; ``parallel_stops`` of them at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ._common import usage

REPO = Path(__file__).resolve().parents[1]
SOCKET = "unix:///run/berth-dev/docker.sock"
FOREVER = "import signal\nsignal.pause()\n"
STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.pause()\n"


def _engine() -> None:
    script = str(REPO / "scripts/engine")
    if subprocess.run([script, "status"], capture_output=True).returncode != 0:
        subprocess.run([script, "start"], check=True, capture_output=True)


def run(workers: int, grace: float, parallel: int | None) -> dict[str, Any]:
    import docker
    import httpx

    _engine()
    run_id = uuid.uuid4().hex[:6]
    name = f"bench-sup-{run_id}"
    base = Path("/var/lib/berth-bench/supervisor") / run_id
    base.mkdir(parents=True)
    os.chmod(base, 0o755)
    sock = base / "state" / "api.sock"
    cfg = base / "berth.toml"
    cfg.write_text(f'[node]\nname = "{name}"\nlocal_dir = "{base}/local"\nlog_dir = "{base}/log"\n'
                   f'state_dir = "{base}/state"\ndocker_host = "{SOCKET}"\n[images]\ndefault = "berth/python:latest"\n'
                   f'[container]\ncgroup_parent = "/berth-bench"\n[supervisor]\ngrace_s = {grace}\n'
                   + (f"parallel_stops = {parallel}\n" if parallel else "")
                   # idle workers of the default limits, more than the machine has: promised on purpose
                   + f"[capacity]\ncpu_percent = {100 * workers}\npids = {1024 * workers}\n")
    client = docker.APIClient(base_url=SOCKET, version="auto")

    def running() -> int:
        return len(client.containers(filters={"label": f"berth.node={name}", "status": "running"}))

    def listed() -> int:
        return len(client.containers(all=True, filters={"label": f"berth.node={name}"}))

    def until(pred: Any, timeout: float = 900.0) -> float:
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("bench: timed out")
            time.sleep(0.02)
        return time.monotonic() - t0

    def specs(script: str) -> list[dict[str, Any]]:
        return [{"worker_id": f"{name}-w{i}", "topology_id": "bench-sup", "port": 6700 + i, "user": "berth-alice",
                 "command": ["python3", "-c", script], "memory_mb": 48} for i in range(workers)]

    serve = subprocess.Popen([sys.executable, "-m", "berth", "--config", str(cfg), "serve"], cwd=REPO,
                             stderr=subprocess.DEVNULL)
    out: dict[str, Any] = {"workers": workers, "grace_s": grace, "parallel_stops": parallel or 16}
    try:
        until(sock.exists, 60)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://berth", timeout=60) as c:
            t0 = time.monotonic()
            c.put("/assignments", json={"workers": specs(FOREVER)}).raise_for_status()
            out["all_running_s"] = round(time.monotonic() - t0 + until(lambda: running() == workers), 2)
            until(lambda: all(w["state"] == "running" for w in c.get("/workers").json()))
            info = usage(serve.pid)
            out["threads"], out["rss_mib"] = info["Threads"], round(info["VmRSS"] / 1024, 1)
            t0 = time.monotonic()
            c.put("/assignments", json={"workers": []}).raise_for_status()
            out["all_removed_s"] = round(time.monotonic() - t0 + until(lambda: listed() == 0), 2)
            c.put("/assignments", json={"workers": specs(STUBBORN)}).raise_for_status()
            until(lambda: running() == workers)
            until(lambda: all(w["state"] == "running" for w in c.get("/workers").json()))
            t0 = time.monotonic()
            c.put("/assignments", json={"workers": []}).raise_for_status()
            out["stubborn_removed_s"] = round(time.monotonic() - t0 + until(lambda: listed() == 0), 2)
            out["threads_after"] = usage(serve.pid)["Threads"]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(120)
        for ctr in client.containers(all=True, filters={"label": f"berth.node={name}"}):
            client.remove_container(ctr["Id"], force=True)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.supervisor", description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=40)
    p.add_argument("--grace", type=float, default=10.0)
    p.add_argument("--parallel-stops", dest="parallel", type=int, default=None,
                   help="[supervisor] parallel_stops (default: berth's, 16)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.supervisor needs root (it starts workers as berth-alice)", file=sys.stderr)
        return 2
    result = run(args.workers, args.grace, args.parallel)
    if args.json:
        print(json.dumps(result))
    else:
        w = result["workers"]
        print(f"{w} workers: all running in {result['all_running_s']} s; serve then has {result['threads']} threads, "
              f"{result['rss_mib']} MiB RSS; all removed in {result['all_removed_s']} s")
        print(f"{w} workers ignoring SIGTERM, grace {result['grace_s']} s, {result['parallel_stops']} stops at a time: "
              f"removed in {result['stubborn_removed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
