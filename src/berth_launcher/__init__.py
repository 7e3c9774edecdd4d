"""``berth-worker-launcher``: Storm's ``worker-launcher`` without setuid.

Storm's supervisor runs the program named by ``supervisor.worker.launcher`` as
``<program> <user> <command> <args…>`` for each step it takes as a topology's user. Storm ships a
setuid-root C program for it. This one has no privilege at all: it sends its argv to ``berth
serve`` (root) over berth's API unix socket, and berth checks and carries out the command
(``berth._node.launcher``) for Storm's supervisor's uid only, then this program prints what
berth sends back and exits with the code Storm's own launcher would have.

It is a package of its own, standard library only: Storm runs it for every directory it sets up
or removes, so it must start in milliseconds, which importing ``berth`` would not allow.
The socket is ``$BERTH_SOCKET``, else ``/run/berth/api.sock`` (berth's ``api.socket`` on a Storm node:
berth's state dir, where its default socket lies, is root's alone).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import sys

DEFAULT_SOCKET = "/run/berth/api.sock"
ENV_SOCKET = "BERTH_SOCKET"
ROUTE = "/storm/launcher"
MAX_ARGS = 8
MAX_ARG = 4096
CONNECT_S = 5.0
TIMEOUT_S = 60.0
"""The longest a command may take (berth stops a tree command well before); a profiler, which
may dump a large heap, gets ``PROFILER_TIMEOUT_S``."""
PROFILER_TIMEOUT_S = 600.0

INVALID_ARGUMENT_NUMBER = 1
INVALID_CONTAINER_EXEC_PERMISSIONS = 22
INVALID_CONFIG_FILE = 24
FAILED = 255
"""Storm's exit codes (``worker-launcher.h``) this program gives itself; berth gives the others."""

USAGE = """Usage: worker-launcher --checksetup
Usage: worker-launcher user command command-args
Commands:
   initialize stormdist dir: code-dir <code-directory>
   initialize artifacts dir: artifacts-dir <directory>
   set up blob permissions: blob <path>
   remove a file/directory: rmr <directory>
   launch a profiler: profiler <working-directory> <script-to-run>
   signal a worker: signal <pid> <signal>
(worker and the docker/OCI commands are berth's isolation plugin's: refused here)"""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("berth", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_S)
            sock.connect(self._path)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _not_setuid() -> str | None:
    """Why this program must refuse to run, if it (or its interpreter) was made setuid/setgid:
    the point of it is that nothing on a Storm node has to be."""
    if os.geteuid() != os.getuid() or os.getegid() != os.getgid():
        return "running with set-user/group-ID privileges"
    for path in {os.path.realpath(sys.argv[0] or sys.executable), os.path.realpath(sys.executable)}:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & (stat.S_ISUID | stat.S_ISGID):
            return f"{path} has the setuid or setgid bit"
    return None


def _bad_argv(args: list[str]) -> str | None:
    if len(args) > MAX_ARGS:
        return f"more than {MAX_ARGS} arguments"
    for i, arg in enumerate(args, 1):
        try:
            size = len(arg.encode("utf-8"))
        except UnicodeEncodeError:
            return f"argument {i} is not valid UTF-8"
        if size > MAX_ARG:
            return f"argument {i} is longer than {MAX_ARG} bytes"
    return None


def _ask(path: str, method: str, body: dict[str, object] | None, timeout: float) -> tuple[int, dict[str, object]]:
    conn = _UnixConnection(path, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, ROUTE if body is not None else ROUTE + "/check", body=payload,
                     headers={"Content-Type": "application/json"} if payload else {})
        resp = conn.getresponse()
        raw = resp.read(1 << 22)
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            data = {}
        return resp.status, data if isinstance(data, dict) else {}
    finally:
        conn.close()


def _detail(data: dict[str, object]) -> str:
    detail = data.get("detail")
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail or "no reason given")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = args == ["--checksetup"]
    if len(args) < 2 and not check:
        print(USAGE, flush=True)
        return INVALID_ARGUMENT_NUMBER
    why = _not_setuid()
    if why:
        _err(f"ERROR: berth-worker-launcher must not be setuid or setgid ({why}): berth does the privileged "
             "steps. Remove the bit (chmod u-s,g-s).")
        return INVALID_CONTAINER_EXEC_PERMISSIONS
    bad = _bad_argv(args)
    if bad:
        _err(f"ERROR: {bad}; refused")
        return INVALID_ARGUMENT_NUMBER
    path = os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET
    timeout = PROFILER_TIMEOUT_S if len(args) > 1 and args[1].lower() == "profiler" else TIMEOUT_S
    try:
        status, data = _ask(path, "GET" if check else "POST", None if check else {"argv": args}, timeout)
    except (OSError, http.client.HTTPException) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or str(exc)
                                                                     or type(exc).__name__)
        _err(f"ERROR: berth is not answering on {path} ({reason}): is `berth serve` running, and may this user "
             f"reach its socket? (set {ENV_SOCKET} if berth's socket is elsewhere)")
        return INVALID_CONFIG_FILE
    if status == 200 and check:
        print(f"berth answers on {path}: the worker-launcher is enabled for {data.get('supervisor_user')} "
              f"(uid {data.get('uid')}), group {data.get('group')}", flush=True)
        return 0
    if status == 200 and isinstance(data.get("code"), int) and isinstance(data.get("output"), list):
        out = data["output"]
        assert isinstance(out, list)
        for line in out:
            print(line, flush=True)
        code = data["code"]
        assert isinstance(code, int)
        return code & 0xFF
    _err(f"ERROR: berth refused the call ({status}): {_detail(data)}")
    if status in (413, 422):
        return INVALID_ARGUMENT_NUMBER
    return INVALID_CONFIG_FILE if status in (403, 404) else FAILED
