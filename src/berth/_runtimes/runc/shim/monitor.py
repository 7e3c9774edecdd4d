"""The shim's one loop: requests on the socket, SIGCHLD, pidfds of adopted containers, grace timers."""

from __future__ import annotations

import heapq
import os
import selectors
import signal
import socket
import time
from typing import Any

from . import VERSION, WORKERS, files
from .argv import command
from .exits import RETRY_S, Child, ExitBook
from .files import decode_status, log, now_iso, proc_state, read_json, start_time, tail, write_json
from .logs import DRAIN_BYTES, MIN_SHARE, PIPE_BYTES, REST_S, TURN_BYTES, Output, Outputs, make_pipe
from .wire import Conn, Wire

MAX_EARLY = 4096
_SPAWN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


class Shim(Wire, Outputs, ExitBook):  # Outputs before the stubs of ExitBook
    def __init__(self, base: str, runc: str, root: str, listen: socket.socket, lock_fd: int) -> None:
        self.base, self.runc, self.root = base, runc, root
        self.workers = os.path.join(base, WORKERS)
        self.listen, self.lock_fd = listen, lock_fd
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.launching: dict[int, tuple[Conn, dict[str, Any]]] = {}
        self.deleting: dict[int, tuple[str, list[Conn]]] = {}
        self.children: dict[int, Child] = {}
        self.by_cid: dict[str, Child] = {}
        self.early: dict[int, tuple[int, float]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self.waiters: dict[str, list[tuple[Conn, str]]] = {}
        self.timers: list[tuple[float, str, int]] = []
        self.outputs: dict[str, Output] = {}
        """Each worker's pipe and files, by container id, from its launch until its container is deleted."""
        self.unwritten: dict[str, tuple[str, dict[str, Any]]] = {}
        """Exits recorded in memory whose file is not written yet (this turn's, and those a full
        disk refused): answered from here meanwhile (``exit``), never taken for running."""
        self.failed: set[str] = set()
        """Those of ``unwritten`` that could not be written: tried again every ``RETRY_S``."""
        self.started_at = now_iso()
        self.upgrade_requested = False
        self.stopping = False
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.signals: list[int] = []
        listen.setblocking(False)
        self.sel.register(listen, selectors.EVENT_READ, "listen")
        self.sel.register(r, selectors.EVENT_READ, "wake")

    def _on_signal(self, sig: int, _frame: Any) -> None:
        self.signals.append(sig)

    # -- start-up: find what a previous shim (or this one before an upgrade) left ------------------

    def recover(self, pipes: dict[str, int] | None = None) -> None:
        """Know the workers again from their files; ``pipes`` (worker dir name -> read end) are
        the outputs an upgrade handed over."""
        try:
            names = sorted(os.listdir(self.workers))
        except FileNotFoundError:
            names = []
        me = os.getpid()
        pipes = dict(pipes or {})
        for name in names:
            try:
                self._recover_one(name, pipes, me)
            except (KeyError, TypeError, ValueError, OSError) as exc:  # a hand edit, a damaged disk
                log(f"workers/{name}: its files make no sense ({exc!r}); left alone")
        for fd in pipes.values():  # a worker whose files are gone: nobody will read its output
            os.close(fd)

    def _recover_one(self, name: str, pipes: dict[str, int], me: int) -> None:
        wdir = os.path.join(self.workers, name)
        started = read_json(os.path.join(wdir, "started.json"))
        ended = read_json(os.path.join(wdir, "exit.json"))
        if name in pipes and started is not None:
            self._open_output(str(started["id"]), pipes.pop(name), started)
        if started is not None and str(started.get("id")) in self.unwritten:
            return  # ended, recorded before an upgrade, not yet written (restore_unwritten)
        if ended is not None:
            if ended.get("id") and os.path.isdir(os.path.join(self.root, str(ended["id"]))):
                self.pending[ended["id"]] = {"event": "exit", **ended}  # never acknowledged
            return
        if started is None:
            started = files.started_after_a_lost_launch(wdir)
            if started is None:
                return
        child = Child(started, wdir)
        pid, cid = child.pid, child.cid
        st = proc_state(pid)
        same = st is not None and start_time(pid) == started.get("start_time")
        kill = read_json(os.path.join(wdir, "kill.json"))
        if same and kill is not None and kill.get("id") == cid:
            self._kill_at(child, float(kill["deadline"]))
        if same and st is not None and st[1] == me:
            self._watch(child)  # still our child (an upgrade): its status will be exact
        elif same and st is not None and st[0] != "Z":
            try:
                child.pidfd = os.pidfd_open(pid)
            except OSError:
                self._record(child, None)
                return
            self._watch(child)
            self.sel.register(child.pidfd, selectors.EVENT_READ, ("pidfd", pid))
            log(f"adopted {cid} (pid {pid}): its exit status will be lost (it is not this shim's child)")
        else:
            self._record(child, None)
            log(f"{cid} (pid {pid}) ended while no shim watched it: status lost")

    def _watch(self, child: Child) -> None:
        self.children[child.pid] = child
        self.by_cid[child.cid] = child

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        self.reap()
        next_retry = time.monotonic()
        resting: float | None = None
        while not self.stopping:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            if resting is not None:
                timeout = max(0.0, min(timeout if timeout is not None else REST_S, resting - time.monotonic()))
            if self.failed:
                timeout = max(0.0, min(timeout if timeout is not None else RETRY_S, next_retry - time.monotonic()))
            outputs = []
            for key, mask in self.sel.select(timeout):
                tag = key.data
                if tag == "listen":
                    self._accept()
                elif tag == "wake":
                    self._drain_wake()
                elif isinstance(tag, tuple) and tag[0] == "out":
                    outputs.append(tag[1])
                elif isinstance(tag, tuple) and tag[0] == "pidfd":
                    self._adopted_exit(tag[1])
                else:
                    conn = self.conns.get(key.fd)
                    if conn is not None:
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and key.fd in self.conns:
                            self._flush(conn)
            now = time.monotonic()
            if outputs:  # after exits and requests; one turn moves TURN_BYTES at most, shared
                share = max(MIN_SHARE, min(DRAIN_BYTES, TURN_BYTES // len(outputs)))
                for cid in outputs:
                    self._drain_output(cid, share, now)
            resting = self._wake_outputs(now)
            self._fire_timers()
            if self.unwritten:  # this turn's exits, and every RETRY_S those that could not be written
                retry = bool(self.failed) and time.monotonic() >= next_retry
                next_retry = time.monotonic() + RETRY_S if retry else next_retry
                self._write_unwritten(retry)
            if self.upgrade_requested and not self.launching and not self.deleting:
                self._exec_self()
        log("stopped; containers keep running")

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        sigs, self.signals = self.signals, []
        for sig in sigs:
            if sig in (signal.SIGTERM, signal.SIGINT) and self.by_cid:
                log(f"{signal.Signals(sig).name} ignored: {len(self.by_cid)} containers run (their pipes and "
                    "statuses would go with this shim; `berth shim stop --force` or SIGKILL to stop it anyway)")
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            elif sig == signal.SIGHUP:
                self.upgrade_requested = True
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, status, _ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            when = time.time()
            if pid in self.launching:
                self._launched(pid, status)
            elif pid in self.children:
                self._record(self.children[pid], status, when)
            elif pid in self.deleting:
                cid, conns = self.deleting.pop(pid)
                for conn in conns:
                    self._send(conn, {"ok": True, "id": cid})
            else:
                # Exited before its runc reported its pid: kept until the launch asks.
                self.early[pid] = (status, when)
                while len(self.early) > MAX_EARLY:
                    self.early.pop(next(iter(self.early)))

    def _spawn(self, argv: list[str], stdout: int | None = None) -> int:
        """``stdout``: the write end of a worker's pipe, its stdout and stderr (runc passes them on)."""
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
        if stdout is not None:
            actions += [(os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stdout, 2)]
        else:
            actions += [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0), (os.POSIX_SPAWN_DUP2, 1, 2)]
        return os.posix_spawn(self.runc, argv, _SPAWN_ENV, file_actions=actions,
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM,
                                         signal.SIGHUP, signal.SIGINT))

    # -- requests ------------------------------------------------------------------------------

    def _handle(self, conn: Conn, req: dict[str, Any]) -> None:
        op = req.get("op")
        if op == "hello":
            self._send(conn, {"ok": True, **self.status()})
        elif op == "run":
            self._run(conn, req)
        elif op == "subscribe":
            conn.subscribed = True
            self._send(conn, {"ok": True})
            for ev in list(self.pending.values()):
                self._send(conn, ev)
        elif op == "ack":
            cid = str(req["id"])
            if self.pending.pop(cid, None) is not None:
                self._delete(cid, None)
        elif op in ("kill", "remove"):
            self._kill(conn, req, remove=op == "remove")
        elif op == "exit":
            self._send(conn, {"ok": True, "exit": self._exit_of(str(req["id"]))})
        elif op == "stop":
            alive = [c.cid for c in self.by_cid.values()]
            if alive and not req.get("force"):
                self._send(conn, {"ok": False, "error": f"{len(alive)} containers are running; their exit "
                                   "statuses would be lost while no shim runs (force to stop anyway)"})
            else:
                self._send(conn, {"ok": True, "pid": os.getpid()})
                self._flush(conn)
                self.stopping = True
        elif op == "upgrade":
            self._send(conn, {"ok": True, "pid": os.getpid()})
            self._flush(conn)
            self.upgrade_requested = True
        else:
            self._send(conn, {"ok": False, "error": f"unknown op {op!r}"})

    def status(self) -> dict[str, Any]:
        rss, threads = files.self_usage()
        return {"pid": os.getpid(), "version": VERSION, "started_at": self.started_at,
                "execs": int(os.environ.get("BERTH_SHIM_EXECS", "0")), "containers": len(self.by_cid),
                "adopted": sum(1 for c in self.by_cid.values() if c.pidfd is not None),
                "pending": len(self.pending), "launching": len(self.launching), "rss_bytes": rss,
                "threads": threads, "outputs": len(self.outputs), "unwritten": len(self.unwritten),
                "output_dropped_bytes": sum(o.lost for o in self.outputs.values())}

    def _run(self, conn: Conn, req: dict[str, Any]) -> None:
        cid, wdir = str(req["id"]), os.path.realpath(str(req["dir"]))
        if os.path.dirname(wdir) != os.path.realpath(self.workers):
            raise ValueError(f"dir {wdir} is not under {self.workers}")
        if self.upgrade_requested or self.stopping:
            self._send(conn, {"ok": False, "retry": True, "error": "the shim is restarting; try again"})
            return
        if cid in self.by_cid:
            raise ValueError(f"{cid} is running already")
        if os.path.dirname(os.path.realpath(str(req["log"]))) != wdir:
            raise ValueError(f"log {req['log']} is not in {wdir}")
        write_json(os.path.join(wdir, "launch.json"), req, durable=False)  # worthless once the machine is down
        argv = [self.runc, "--root", self.root, "--log", os.path.join(wdir, "runc.log"), "run", "-d",
                "--pid-file", os.path.join(wdir, "init.pid"), "--bundle", str(req["bundle"]), cid]
        r, w = make_pipe()
        try:
            pid = self._spawn(argv, stdout=w)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)  # the worker (through runc) holds the only write end
        self._open_output(cid, r, req)
        self.launching[pid] = (conn, {**req, "dir": wdir, "t0": time.time()})

    def _launched(self, runc_pid: int, status: int) -> None:
        conn, req = self.launching.pop(runc_pid)
        wdir = req["dir"]
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            self._close_output(str(req["id"]))
            self._send(conn, {"ok": False, "error": f"runc run exited with {decode_status(status)['exit_code']}: "
                               + tail(os.path.join(wdir, "runc.log"))})
            return
        try:
            with open(os.path.join(wdir, "init.pid"), encoding="ascii") as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError) as exc:
            self._close_output(str(req["id"]))
            self._send(conn, {"ok": False, "error": f"runc gave no pid: {exc}"})
            return
        info = {**files.carried(req), "pid": pid, "start_time": start_time(pid), "started_at": now_iso(req["t0"])}
        child = Child(info, wdir)
        self._watch(child)  # its parent is this shim whatever happens next: it is reaped
        try:  # not flushed: worthless once the machine is down (every container is; durable.py)
            write_json(os.path.join(wdir, "started.json"), info, durable=False)
        except OSError as exc:  # berth takes the launch for failed and removes the container
            self._send(conn, {"ok": False, "error": f"cannot record the start of {child.cid}: {exc.strerror}"})
        else:
            self._send(conn, {"ok": True, "pid": pid, "started_at": child.started_at})
        if pid in self.early:  # it ended before runc's pid file could be read
            status, when = self.early.pop(pid)
            self._record(child, status, when)

    def _kill(self, conn: Conn, req: dict[str, Any], remove: bool) -> None:
        cid = str(req["id"])
        sig = int(req.get("signal", signal.SIGKILL if remove else signal.SIGTERM))
        child = self.by_cid.get(cid)
        if child is None:
            if remove:
                self.pending.pop(cid, None)
                self._delete(cid, conn)
            else:
                self._send(conn, {"ok": True, "id": cid, "running": False})
            return
        self.waiters.setdefault(cid, []).append((conn, "remove" if remove else "kill"))
        if sig == signal.SIGTERM and not files.handles(child.pid, sig):
            # The worker is PID 1 of its namespace (no init): the kernel drops a signal it does not
            # handle. SIGTERM's default action, which the engine's init gives, is its end: at once.
            sig = signal.SIGKILL
        self._signal(child, sig)
        grace = req.get("grace")
        if grace is not None and sig != signal.SIGKILL:
            self._kill_at(child, time.time() + float(grace))

    def _kill_at(self, child: Child, deadline: float) -> None:
        """SIGKILL ``child`` at ``deadline`` (wall clock), or at the earlier one already promised.
        Kept in its ``kill.json``: the promise outlives the caller, an upgrade and this shim."""
        path = os.path.join(child.dir, "kill.json")
        deadline = min(deadline, float((read_json(path) or {}).get("deadline", deadline)))
        write_json(path, {"id": child.cid, "deadline": deadline}, durable=False)  # no container outlives a crash
        heapq.heappush(self.timers, (time.monotonic() + deadline - time.time(), child.cid, child.pid))

    def _signal(self, child: Child, sig: int) -> None:
        try:
            if child.pidfd is not None:
                signal.pidfd_send_signal(child.pidfd, sig)
            else:
                os.kill(child.pid, sig)  # our unreaped child: its pid cannot have been reused
        except ProcessLookupError:
            pass

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, cid, pid = heapq.heappop(self.timers)
            child = self.by_cid.get(cid)
            if child is not None and child.pid == pid:
                self._signal(child, signal.SIGKILL)

    def _delete(self, cid: str, conn: Conn | None) -> int:
        """``runc delete`` (which removes the cgroup), answering ``conn`` when it is done. The
        output's last bytes are drained first; what a process left in the container could still
        write after it is not kept."""
        self._drain_output(cid, 4 * PIPE_BYTES)
        self._close_output(cid)
        pid = self._spawn([self.runc, "--root", self.root, "delete", "--force", cid])
        self.deleting[pid] = (cid, [conn] if conn is not None else [])
        return pid

    # -- upgrade ------------------------------------------------------------------------------------

    def _exec_self(self, crashes: int = 0) -> None:
        """Replace this program with the one now on disk, keeping the pid (so every container stays
        this process's child), the listening socket, the lock, each worker's pipe (its writes never
        meet a closed pipe) and the exits not yet written; the new image re-reads the workers'
        files to know its children again. Returns only when the exec failed (then nothing changed)."""
        log("upgrading in place (execv)" if not crashes else f"re-executing after a crash ({crashes} in a row)")
        for conn in list(self.conns.values()):
            self._flush(conn)
        keep = [self.listen.fileno(), self.lock_fd]
        argv = [*command(self.base, self.runc, self.root), "--listen-fd", str(keep[0]), "--lock-fd", str(keep[1])]
        pipes = self.carry_outputs()
        keep += [out.rfd for out in self.outputs.values()]  # inheritable for this one exec only
        if pipes:
            argv += ["--pipes", pipes]
        carry = self.carry_unwritten()
        if carry is not None:
            keep.append(carry)
            argv += ["--carry", str(carry)]
        for fd in keep:
            os.set_inheritable(fd, True)
        env = {**os.environ, "BERTH_SHIM_EXECS": str(int(os.environ.get("BERTH_SHIM_EXECS", "0")) + 1),
               "BERTH_SHIM_CRASHES": str(crashes)}
        try:
            os.execve(argv[0], argv, env)
        except OSError as exc:
            log(f"cannot re-execute {argv[0]}: {exc}; going on as before")
            for fd in keep:  # never handed to a runc this shim spawns
                os.set_inheritable(fd, False)
            if carry is not None:
                os.close(carry)
            self.upgrade_requested = False
