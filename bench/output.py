"""python -m bench.output — what berth-shim spends draining a runc worker's output.

    python -m bench.output [--rate 100] [--seconds 10] [--flood-mb 2048] [--json]

Needs root and the python image directory (``scripts/build-images --no-import``). One berth node
on the runc runtime (default log limits, 20 MiB x 5), one worker at a time:

* **paced**: the worker writes 1 MiB blocks at ``--rate`` MB/s for ``--seconds``; the shim's CPU
  time over that window (``/proc/<shim>/task/*/schedstat``, exact), as a share of one core;
* **flood**: ``--flood-mb`` MiB as fast as the worker can write them: the throughput the shim
  drains (the worker waits on its pipe when the shim is behind) and the shim's CPU per GB;
* **on disk**: the most the worker's output files took (size or blocks) at any sample, against the
  node's limit (``log_max_size_mb`` x ``log_max_files``).

``bench all`` runs it too (``--rate 100 --seconds 10``) and puts it in benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ._common import DEFAULT_ROOTFS, NAME_PREFIX, NODE_PREFIX, cpu_ns

PACED = r"""
import os, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
block = b"o" * ((1 << 20) - 1) + b"\n"
open("started", "w").close()
t0 = time.monotonic()
n = 0
while n < rate * seconds:
    os.write(1, block)
    n += 1
    wait = t0 + n / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
open(".done", "w").write(f"{n} {time.monotonic() - t0}")
os.rename(".done", "done")
"""


def _run_one(node: Any, config: Any, wid: str, args: list[str], shim_pid: int) -> dict[str, float]:
    from berth import WorkerSpec

    from ._common import USER

    root = Path(config.node.local_dir, "workers", wid)
    out_dir = Path(config.runtime_dir("runc"), "workers", wid)
    spec = WorkerSpec(worker_id=wid, topology_id="bench-out", port=6900, user=USER,
                      command=("python3", "-c", PACED, *args), memory_mb=256)
    node.launch(spec, on_exit=lambda r: None)
    peak, cpu0 = 0, None
    while not (root / "done").exists():
        if cpu0 is None and (root / "started").exists():
            cpu0 = cpu_ns(shim_pid)
        total = 0
        for p in out_dir.glob("output.log*"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            total += max(st.st_size, st.st_blocks * 512)
        peak = max(peak, total)
        time.sleep(0.002)
    cpu1 = cpu_ns(shim_pid)
    blocks, elapsed = (float(x) for x in (root / "done").read_text().split())
    node.wait(wid, 120)
    node.cleanup(wid)
    return {"mb_s": round(blocks * 1.048576 / elapsed, 1), "elapsed_s": round(elapsed, 2),
            "shim_cpu_s": round(((cpu1 or 0) - (cpu0 or 0)) / 1e9, 3), "peak_on_disk_mb": round(peak / 2**20, 1)}


def measure(run_dir: Path, run: str, image_dir: str, rate: float = 100.0, seconds: float = 10.0,
            flood_mb: int = 2048, say: Any = print, quick: bool = False) -> dict[str, Any]:
    """The paced and the flooding worker; ``quick``: 2 s and 256 MiB."""
    if quick:
        seconds, flood_mb = min(seconds, 2.0), min(flood_mb, 256)
    from berth import HostFacts

    from ._common import SHARED_URL
    from ._launchers import BerthRuncLauncher, make_config

    launcher = BerthRuncLauncher(make_config(run_dir, f"{NODE_PREFIX}{run}-o", SHARED_URL), SHARED_URL,
                                 HostFacts.probe(), image_dir)
    try:
        pid = launcher.shim.pid()
        if pid is None:
            raise RuntimeError("berth-shim did not start")
        logs = launcher.config.container
        say(f"output: one worker at {rate:g} MB/s for {seconds:g} s, then {flood_mb} MiB as fast as it can")
        wid = f"{NAME_PREFIX}{run}-o"
        paced = _run_one(launcher.node, launcher.config, f"{wid}1", [str(rate), str(seconds)], pid)
        flood = _run_one(launcher.node, launcher.config, f"{wid}2", [str(1e9), str(flood_mb / 1e9)], pid)
        return {"rate_mb_s": rate, "paced": {**paced, "shim_cpu_pct": round(100 * paced["shim_cpu_s"] /
                                                                            paced["elapsed_s"], 1)},
                "flood": {**flood, "shim_cpu_s_per_gb": round(flood["shim_cpu_s"] / (flood_mb / 1024), 3)},
                "limit_mb": logs.log_max_size_mb * logs.log_max_files}
    finally:
        launcher.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.output", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="MB/s of the paced worker (100)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long it writes (10)")
    ap.add_argument("--flood-mb", type=int, default=2048, help="MiB the flooding worker writes (2048)")
    ap.add_argument("--rootfs", default=DEFAULT_ROOTFS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.output: needs root (runc, chown of worker directories)", file=sys.stderr)
        return 1
    from . import _env

    run = uuid.uuid4().hex[:6]
    _env.ensure_users()
    _env.ensure_rootfs(args.rootfs)
    run_dir = _env.new_run_dir(run)
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    try:
        got = measure(run_dir, run, args.rootfs, args.rate, args.seconds, args.flood_mb, say)
    finally:
        _env.sweep(None, run, say)
    if args.json:
        print(json.dumps(got, indent=1))
    else:
        p, f = got["paced"], got["flood"]
        print(f"paced {p['mb_s']} MB/s for {p['elapsed_s']} s: shim CPU {p['shim_cpu_s']} s = {p['shim_cpu_pct']} % "
              f"of a core; peak on disk {p['peak_on_disk_mb']} MiB (limit {got['limit_mb']} MiB)")
        print(f"flood {f['mb_s']} MB/s: shim CPU {f['shim_cpu_s_per_gb']} s per GiB; peak on disk "
              f"{f['peak_on_disk_mb']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
