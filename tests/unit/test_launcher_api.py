"""The worker-launcher's route and ``berth-worker-launcher`` itself: only Storm's supervisor's uid
(``SO_PEERCRED``) is answered; berth down, slow or refusing is a clear message and Storm's
setup code, never a hang; the program refuses to run setuid."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import berth_launcher
from berth._cli.launcher import install_program
from berth._cli.service import storm_routers
from berth._core.config import DEFAULT_STATE_DIR, config_from_mapping
from berth._node.stormdirs import StormDirs
from berth._runtimes.fake.runtime import FakeRuntime
from berth._service.api import create_app
from berth._service.storm_api import PEER_HOST, create_storm_app, peer_protocol
from berth._service.stormnode import StormService
from berth._storm.yaml import BERTH_PLUGIN

from ..polling import poll_until
from ._supfake import Harness
from .test_launcher_rules import DAVE, stormdist

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the launcher as the test users")


def node_config(base: Path, supervisor: str | None = "berth-dave") -> Any:
    return config_from_mapping({
        "node": {"name": "n1", "local_dir": str(base / "local"), "log_dir": str(base / "log"),
                 "state_dir": str(base / "state")},
        "storm": {"plugin": BERTH_PLUGIN, **({"supervisor_user": supervisor} if supervisor else {})}})


def app_for(base: Path) -> Any:
    """``berth serve --storm``'s app (not started: the launcher's routes need only the node)."""
    service = StormService(node_config(base), runtime=FakeRuntime())
    return create_storm_app(service, routers=storm_routers(service))


def as_peer(app: Any, uid: int | None) -> Any:
    """The app as ``peer_protocol`` serves it: the peer's uid as the request's client."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and uid is not None:
            scope = {**scope, "client": (PEER_HOST, uid)}
        await app(scope, receive, send)
    return wrapped


def test_only_the_supervisors_uid_and_root_are_answered(base: Path) -> None:
    top = stormdist(base)
    argv = {"argv": ["berth-alice", "code-dir", str(top)]}
    for uid, status in ((None, 403), (2101, 403), (2103, 403), (DAVE, 200), (0, 200)):
        r = TestClient(as_peer(app_for(base), uid)).post("/storm/launcher", json=argv)
        assert r.status_code == status, (uid, r.json())
        if status == 403:
            assert os.stat(top).st_uid == DAVE
    assert r.json()["code"] == 0 and r.json()["output"][:2] == ["main : command provided code-dir",
                                                                "main : user is berth-alice"]
    assert os.stat(top).st_uid == 2101


def test_without_a_supervisor_user_no_one_is_answered_and_plain_serve_has_no_route(base: Path, h: Harness) -> None:
    service = StormService(node_config(base, None), runtime=FakeRuntime(), dirs=StormDirs(DAVE, 2300))
    app = create_storm_app(service, routers=storm_routers(service))
    r = TestClient(as_peer(app, DAVE)).get("/storm/launcher/check")
    assert r.status_code == 403 and "berth.storm.supervisor.user" in r.json()["detail"][0]["msg"]
    assert TestClient(as_peer(create_app(h.sup), DAVE)).get("/storm/launcher/check").status_code == 404


# -- the program, end to end over a real socket ---------------------------------------------------------

@pytest.fixture
def served(base: Path) -> Iterator[str]:
    """The launcher's routes under uvicorn with berth's protocol, on a socket berth-dave can reach
    (group berth-team, as ``api.socket_group``)."""
    import uvicorn

    run = Path(tempfile.mkdtemp(prefix="berth-launcher-", dir="/tmp"))
    os.chmod(run, 0o755)
    path = str(run / "api.sock")
    server = uvicorn.Server(uvicorn.Config(app_for(base), uds=path, http=peer_protocol(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll_until(lambda: server.started, "uvicorn to listen", timeout=30)
    os.chown(path, -1, 2300)
    os.chmod(path, 0o660)
    yield path
    server.should_exit = True
    thread.join(timeout=30)
    for name in ("api.sock", "berth-worker-launcher"):
        with contextlib.suppress(OSError):
            os.unlink(run / name)
    os.rmdir(run)


def launcher(user: str, socket_path: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The program as ``berth worker-launcher install`` writes it, run as ``user`` (as Storm's
    supervisor runs it: its environment, its own user)."""
    exe = os.path.join(os.path.dirname(socket_path), "berth-worker-launcher")
    if not os.path.exists(exe):
        install_program(exe)
    pw = pwd.getpwnam(user)
    return subprocess.run([exe, *argv], user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=os.getgrouplist(user, pw.pw_gid), env={"BERTH_SOCKET": socket_path},
                          capture_output=True, text=True, timeout=60)


def test_storms_supervisor_runs_it_and_others_are_refused(base: Path, served: str) -> None:
    top = stormdist(base)
    done = launcher("berth-dave", served, "berth-alice", "code-dir", str(top))
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[:2] == ["main : command provided code-dir", "main : user is berth-alice"]
    assert os.stat(top).st_uid == 2101
    ok = launcher("berth-dave", served, "--checksetup")
    assert ok.returncode == 0 and "enabled for berth-dave (uid 2104), group berth-team" in ok.stdout
    # a user in the socket's group is still not Storm's supervisor
    refused = launcher("berth-carol", served, "berth-alice", "rmr", str(top))
    assert refused.returncode == 24 and "may not use the worker-launcher" in refused.stderr, refused
    assert top.exists()
    # and one outside the socket's group cannot even connect
    out = launcher("berth-alice", served, "berth-alice", "rmr", str(top))
    assert out.returncode == 24 and "Permission denied" in out.stderr and top.exists()


# -- the program's own refusals, against a stand-in for berth ------------------------------------------

@contextlib.contextmanager
def fake_berth(reply: bytes | None) -> Iterator[str]:
    """A socket that answers every request with ``reply`` (None: never answers)."""
    run = tempfile.mkdtemp(prefix="berth-fake-", dir="/tmp")
    path = os.path.join(run, "api.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            request = b""
            while (b"\r\n\r\n" not in request or len(request.partition(b"\r\n\r\n")[2]) < _length(request)) \
                    and (chunk := conn.recv(65536)):
                request += chunk  # the whole request, so the reply never cuts its sending short
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)  # wakes the accept
        srv.close()
        for conn in held:
            conn.close()
        thread.join(timeout=10)
        os.unlink(path)
        os.rmdir(run)


def _length(request: bytes) -> int:
    head = request.partition(b"\r\n\r\n")[0]
    return next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), 0)


def http_reply(status: int, body: str) -> bytes:
    data = body.encode()
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data


def main(monkeypatch: pytest.MonkeyPatch, path: str, *argv: str) -> int:
    monkeypatch.setenv("BERTH_SOCKET", path)
    return berth_launcher.main(list(argv))


@pytest.mark.parametrize(("status", "body", "code", "said"), [
    (200, '{"code": 21, "output": ["main : command provided rmr", "ERROR: path: refused"]}', 21, "ERROR: path"),
    (200, '{"code": 300, "output": []}', 300 & 0xFF, ""),
    (403, '{"detail": [{"msg": "uid 5 may not use the worker-launcher"}]}', 24, "uid 5 may not"),
    (422, '{"detail": [{"msg": "too long"}]}', 1, "too long"),
    (500, '{"detail": [{"msg": "internal error"}]}', 255, "internal error"),
    (200, "not json", 255, "refused the call (200)"),
])
def test_what_berth_answers_becomes_the_exit_code(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  status: int, body: str, code: int, said: str) -> None:
    with fake_berth(http_reply(status, body)) as path:
        assert main(monkeypatch, path, "berth-alice", "rmr", "/x") == code
    out = capsys.readouterr()
    assert said in out.out + out.err


def test_berth_not_running_is_24_at_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    assert main(monkeypatch, str(tmp_path / "absent.sock"), "berth-alice", "rmr", "/x") == 24
    assert "berth is not answering on" in capsys.readouterr().err


def test_berth_that_never_answers_is_a_timeout_not_a_hang(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(berth_launcher, "TIMEOUT_S", 0.5)
    with fake_berth(None) as path:
        assert main(monkeypatch, path, "berth-alice", "rmr", "/x") == 24
    assert "(timed out)" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["berth-alice", "rmr", "/" + "x" * 4096], "argument 3 is longer than 4096 bytes"),
    (["berth-alice", "rmr", *["/x"] * 7], "more than 8 arguments"),
    (["berth-alice", "rmr", "/x\udcff"], "argument 3 is not valid UTF-8"),
])
def test_a_huge_or_undecodable_argv_is_never_sent(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], said: str) -> None:
    with fake_berth(None) as path:  # it would hang if anything were sent
        assert main(monkeypatch, path, *argv) == 1
    assert said in capsys.readouterr().err


def test_usage_is_storms(capsys: pytest.CaptureFixture[str]) -> None:
    assert berth_launcher.main(["berth-alice"]) == 1
    assert capsys.readouterr().out.startswith("Usage: worker-launcher --checksetup\n")


def test_it_refuses_to_run_setuid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    copy = tmp_path / "berth-worker-launcher"
    copy.write_text("#!/bin/sh\n")
    os.chmod(copy, 0o4755)
    monkeypatch.setattr(sys, "argv", [str(copy)])
    assert berth_launcher.main(["berth-alice", "rmr", "/x"]) == 22
    assert "must not be setuid" in capsys.readouterr().err


def test_the_program_is_standard_library_only_and_names_berths_socket() -> None:
    import ast

    tree = ast.parse(Path(berth_launcher.__file__).read_text())
    for n in ast.walk(tree):
        names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
            [n.module or ""] if isinstance(n, ast.ImportFrom) else []
        for name in names:
            assert name.split(".")[0] in sys.stdlib_module_names | {"__future__"}, name
    assert not berth_launcher.DEFAULT_SOCKET.startswith(DEFAULT_STATE_DIR)  # root's alone: Storm could not reach it
