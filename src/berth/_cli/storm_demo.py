"""``berth demo --storm``: Apache Storm's own Nimbus and supervisor, with berth isolating every
worker and no setuid program on the node, narrated.

It shows what a Storm operator cares about, in order: Storm and berth start; two word counts are
submitted as two users and ack tuples; their workers are in berth's containers and pass
``berth audit``; each topology's files are its owner's alone; one worker's container is killed
and Storm's supervisor relaunches it through berth while the topology goes on; ``storm kill``
leaves no container and no worker dir; Storm's and berth's directories hold no setuid program.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from .._exceptions import BerthError
from .._node.audit import audit_all
from .._node.node import Node
from .demo import wait_until
from .storm_stack import StormStack
from .views import ps_table

TOPOLOGIES = (("wc-alice", 2, "berth-alice"), ("wc-bob", 1, "berth-bob"))
WAIT_S = 420.0
"""Storm's own pace: JVMs start in seconds, acked counts reach Nimbus every 5 s; the machine is shared."""


def setuid_files(*roots: str) -> list[str]:
    """Regular files with the setuid or setgid bit under ``roots``, as ``find ROOT -xdev -perm
    /6000 -type f`` lists them (links not followed, other filesystems not entered)."""
    done = subprocess.run(["find", *[r for r in roots if os.path.exists(r)], "-xdev", "-perm", "/6000", "-type", "f"],
                          capture_output=True, text=True, timeout=300)
    return done.stdout.split()


def mode_line(path: str) -> str:
    import grp
    import pwd

    st = os.lstat(path)
    return f"{stat.filemode(st.st_mode)} {pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"


class _Demo:
    def __init__(self, stack: StormStack, console: Console) -> None:
        self.stack, self.console = stack, console
        self.ids: dict[str, str] = {}
        self.node: Node | None = None

    def run(self) -> int:
        c, s = self.console, self.stack
        c.rule(f"[bold]berth demo --storm[/] (runtime {s.runtime})")
        c.print("starting Storm's Nimbus and one supervisor (as user [bold]storm[/]), with berth's plugin, "
                "berth's keys and [bold]supervisor.run.worker.as.user: true[/] …")
        s.start()
        c.print("berth's lines in the supervisor's storm.yaml:")
        lines = yaml.safe_dump(s.supervisor_yaml(s.env["STORM_SUPERVISOR_LOG_DIRS"]), sort_keys=False, width=200)
        for line in lines.splitlines():
            c.print(f"  {line}", highlight=False)
        env = s.env
        c.print(f"Storm {env['STORM_VERSION']}: Nimbus on localhost:{env['STORM_NIMBUS_PORT']}, ZooKeeper chroot "
                f"{env['STORM_ZK_ROOT']}, STORM_HOME {env['STORM_HOME']}")
        c.print(f"berth serve --storm (pid {s.serve.pid if s.serve else '?'}) answers on {s.socket}")
        check = s.as_storm("--checksetup")
        c.print(f"as storm: [bold]{s.launcher} --checksetup[/] → exit {check.returncode}: {check.stdout.strip()}")
        self.node = s.node()
        self.topologies()
        self.containers()
        self.files()
        self.relaunch()
        self.kill_all()
        c.rule("[bold green]done")
        return 0

    def topologies(self) -> None:
        c, s = self.console, self.stack
        c.rule("two topologies, two users")
        for name, workers, user in TOPOLOGIES:
            s.storm.submit(name, workers, user)
            c.print(f"submitted [bold]{name}[/] ({workers} worker(s)) as {user}")
        for name, _, _ in TOPOLOGIES:
            wait_until(partial(lambda n: s.storm.acked(n) > 0, name), f"{name} to ack tuples", WAIT_S)
        t = Table(title="Storm's view (scripts/storm info)")
        for col in ("topology", "id", "owner", "workers", "acked"):
            t.add_column(col)
        for name, _, _ in TOPOLOGIES:
            info = s.storm.info(name) or {}
            self.ids[name] = str(info.get("id"))
            t.add_row(name, self.ids[name], str(info.get("owner")), str(len(info.get("workers", []))),
                      str(s.storm.acked(name)))
        c.print(t)

    def containers(self) -> None:
        c = self.console
        node = self.node
        assert node is not None
        c.rule("the workers in berth's containers")
        want = sum(w for _, w, _ in TOPOLOGIES)
        wait_until(lambda: len([w for w in node.ps() if w.running]) == want, f"{want} workers running", WAIT_S)
        c.print(ps_table(node))
        reports = audit_all(node)
        for r in reports:
            c.print(f"  berth audit {r.worker_id}: {'PASS' if r.ok else 'FAIL'} — {len(r.checks)} checks "
                    f"(user, capabilities, no-new-privs, seccomp, mounts, limits)")
        if len(reports) != want or not all(r.ok for r in reports):
            raise BerthError("demo", "berth audit --all did not pass for every worker")

    def files(self) -> None:
        c, s = self.console, self.stack
        node = self.node
        assert node is not None and s.config is not None
        c.rule("each topology's files are its owner's, and no setuid program")
        calls = Counter(" ".join(line.split()[:2]) + (" (refused)" if not line.endswith("exit 0") else "")
                        for line in s.launcher_calls())
        c.print("Storm's supervisor called berth-worker-launcher: "
                + ", ".join(f"{what}: {n}" for what, n in sorted(calls.items())))
        local = s.config.node.local_dir
        for name, _, _ in TOPOLOGIES:
            code = f"{local}/supervisor/stormdist/{self.ids[name]}"
            c.print(f"  {mode_line(code)}  {code}")
        bob = next(w for w in node.ps() if w.user == "berth-bob" and w.running)
        alice_code = f"{local}/supervisor/stormdist/{self.ids['wc-alice']}"
        tried = node.exec(bob.worker_id, ["ls", alice_code])
        said = tried.output.decode(errors="replace").strip().splitlines()[-1:] or [""]
        # soft_wrap: long paths stay on one line whatever the terminal's width (to be copied, or grepped)
        c.print(f"inside bob's worker: [bold]ls {alice_code}[/] → exit {tried.exit_code}: {said[0]}", soft_wrap=True)
        if tried.exit_code == 0:
            raise BerthError("demo", "bob's worker could list alice's topology code")
        env = s.env
        roots = [env["STORM_HOME"], local, env["STORM_SUPERVISOR_LOG_DIRS"], str(s.dir), sys.prefix,
                 str(Path(__file__).resolve().parents[1])]
        found = setuid_files(*roots)
        c.print(f"[bold]find {' '.join(roots)} -xdev -perm /6000 -type f[/]: {len(found)} file(s) {found or ''}",
                soft_wrap=True)
        c.print(f"  {mode_line(s.launcher)}  {s.launcher}  (Storm's own worker-launcher would be setuid root)")
        if found or os.stat(s.launcher).st_mode & (stat.S_ISUID | stat.S_ISGID):
            raise BerthError("demo", "a setuid or setgid program was found")

    def relaunch(self) -> None:
        c, s = self.console, self.stack
        node = self.node
        assert node is not None
        c.rule("a worker's container killed")
        topo = self.ids["wc-alice"]
        victim = next(w for w in node.ps() if w.topology_id == topo and w.running)
        state = node.inspect(victim.worker_id)
        assert state.pid
        os.kill(state.pid, signal.SIGKILL)
        c.print(f"killed the container of [bold]{victim.worker_id}[/] (port {victim.port}): SIGKILL to its init, "
                f"host pid {state.pid}")

        def relaunched() -> bool:
            return any(w.topology_id == topo and w.port == victim.port and w.running
                       and w.worker_id != victim.worker_id for w in node.ps())

        wait_until(relaunched, "Storm's supervisor to relaunch the worker through berth", WAIT_S)
        new = next(w for w in node.ps() if w.topology_id == topo and w.port == victim.port and w.running)
        c.print(f"Storm's supervisor relaunched it through berth: [bold]{new.worker_id}[/] on port {new.port}")
        first = s.storm.acked("wc-alice")
        wait_until(lambda: s.storm.acked("wc-alice") > first, "wc-alice to go on acking", WAIT_S)
        c.print(f"wc-alice acked {first} → {s.storm.acked('wc-alice')}: the topology goes on")
        c.print(ps_table(node))

    def kill_all(self) -> None:
        c, s = self.console, self.stack
        node = self.node
        assert node is not None and s.config is not None
        c.rule("storm kill")
        for name, _, _ in TOPOLOGIES:
            s.storm.kill(name)
            c.print(f"storm kill {name}")
        workers = Path(s.config.node.local_dir, "workers")
        wait_until(lambda: all(s.storm.info(n) is None for n, _, _ in TOPOLOGIES), "Nimbus to forget them", WAIT_S)
        wait_until(lambda: not node.ps(), "no container of this node", WAIT_S)
        wait_until(lambda: not any(workers.iterdir()), "no worker dir", WAIT_S)
        c.print(f"containers of node {s.config.node.name}: {len(node.ps())}; worker dirs in {workers}: "
                f"{len(list(workers.iterdir()))}")
        rmr = [line for line in s.launcher_calls() if " rmr " in line]
        c.print(f"berth-worker-launcher rmr calls: {len(rmr)}, e.g. {rmr[-1] if rmr else '-'} (Storm names its own "
                "user for its own file, workers-users/<id>: refused, as Storm's launcher refuses it, and Storm deletes "
                "it itself; the worker dirs were gone already: the plugin's cleanup removes them as root)")


def run_storm_demo(console: Console, runtime: str, script: str, jar: str, workdir: Path,
                   instance: str | None = None) -> int:
    """The demo on ``runtime``, with Storm's instance ``instance`` (default ``demo-<runtime>``) and
    berth's files under ``workdir``; everything it started is stopped and removed at the end."""
    instance = instance or f"demo-{runtime}"
    stack = StormStack(script, jar, instance=instance, runtime=runtime, workdir=workdir / instance)
    demo = _Demo(stack, console)
    try:
        return demo.run()
    except (BerthError, subprocess.TimeoutExpired) as exc:
        console.print(f"[red]demo failed: {exc}")
        return 1
    finally:
        if demo.node is not None:
            with contextlib.suppress(BerthError):
                for w in demo.node.ps():  # a failed demo leaves no worker behind
                    with contextlib.suppress(BerthError):
                        demo.node.force_kill(w.worker_id)
                        demo.node.cleanup(w.worker_id)
            demo.node.close()
        stack.stop()
