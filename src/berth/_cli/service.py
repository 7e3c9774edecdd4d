"""The supervisor's commands (``supervise``, ``serve``) and what ``ps`` asks a running one.

Both commands hold the node's supervisor lock, answer on the API socket (``supervise`` read
only) so ``berth ps`` can show restarts, failures, the next restart, the last exit and error,
and rejected assignments; both leave workers running on exit unless ``--drain``.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import click

from .._core.config import NodeConfig
from .._core.printable import printable
from .._core.serviceconfig import check_listen_address
from .._exceptions import ConfigError
from .app import get_config, get_node, main, setup_logging

if TYPE_CHECKING:
    from .._service.supervisor import Supervisor


def supervisor_view(config: NodeConfig) -> dict[str, Any] | None:
    """Workers and rejections from a supervisor answering on the API socket, or None."""
    path = config.api_socket
    if not os.path.exists(path):
        return None
    import httpx

    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=2.0) as client:
            workers = client.get("http://berth/workers")
            workers.raise_for_status()
            assigned = client.get("http://berth/assignments")
            assigned.raise_for_status()
            return {"workers": {w["worker_id"]: w for w in workers.json()}, "rejected": assigned.json()["rejected"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _make(ctx: click.Context, assignments: str | None) -> Supervisor:
    from .._service.supervisor import Supervisor

    refuse_storm_node(get_config(ctx))
    setup_logging()
    node = get_node(ctx)
    node.check_state()  # berth's own state: usable, and apart from what workers write
    return Supervisor(node, assignments_path=assignments)


def refuse_storm_node(config: NodeConfig) -> None:
    """berth's supervisor stops every worker not assigned to it, and Storm's supervisor assigns
    a node whose storm.yaml names berth's plugin: that node's workers are Storm's."""
    from .._storm.yaml import BERTH_PLUGIN

    if config.storm is not None and config.storm.plugin == BERTH_PLUGIN and config.storm.plugin_enabled:
        raise ConfigError("storm.resource.isolation.plugin", "names berth's plugin: Storm's supervisor runs this "
                          "node's workers; serve them with `berth serve --storm`")


def check_socket_group(config: NodeConfig) -> None:
    """The API socket's group must exist before anything starts (the socket is given to it once
    bound; failing then left a started supervisor and a socket behind)."""
    group = config.api.socket_group
    if group is None:
        return
    import grp

    try:
        grp.getgrnam(group)
    except KeyError:
        raise ConfigError("api.socket_group", f"no such group {group!r}") from None


def check_apart(config: NodeConfig, assignments: str | None, socket: str | None) -> None:
    """Before anything starts: nobody but root can rewrite the assignments, workers cannot reach
    them, nor the API socket (on it, no token is asked for: its mode is the access control)."""
    from .._node.state import StateDir
    from .._paths import is_under
    from .._service.assignments import check_source

    state = StateDir(config)
    if assignments is not None:
        state.check_apart(assignments, "assignments", "a worker could rewrite what the node runs, or read every "
                          "tenant's specs")
    real = os.path.realpath
    if socket is not None and not is_under(real(socket), real(config.state_dir)):  # (the state dir is checked)
        state.check_apart(socket, "api.socket", "a worker could reach the API, which asks no token there")
    if assignments is not None:
        check_source(assignments)  # root's alone to write: the file(s) and every directory above them


def _progress(done: int, total: int) -> None:
    click.echo(f"draining: {done}/{total} stopped", err=True)


def _start(sup: Supervisor, drain: bool) -> None:
    sup.start()
    for r in sup.rejections():
        click.echo(printable(f"rejected: {r}"), err=True)
    if drain:
        click.echo("on exit, every worker of this node will be stopped (--drain)", err=True)


def wait_for_stop_signal() -> None:
    """Block until SIGTERM or SIGINT: a service without a listener has nothing else to wait on."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


def _announce(where: str) -> None:
    click.echo(f"berth: API listening on {where}", err=True)


@main.command()
@click.option("--assignments", required=True, type=click.Path(exists=True),
              help="A YAML/JSON file {workers: [spec, …]} or a directory of them; watched for changes.")
@click.option("--drain", is_flag=True, help="On exit, stop every worker (default: leave them running).")
@click.option("--no-api", is_flag=True, help="Do not answer on the API socket (read-only otherwise).")
@click.pass_context
def supervise(ctx: click.Context, /, assignments: str, drain: bool, no_api: bool) -> None:
    """Keep the assigned workers running: launch, restart with backoff, replace, stop."""
    from .._service.server import serve

    config = get_config(ctx)
    if not no_api:
        check_socket_group(config)
    check_apart(config, assignments, None if no_api else config.api_socket)
    sup = _make(ctx, assignments)
    _start(sup, drain)
    try:
        if no_api:
            wait_for_stop_signal()
        else:
            serve(sup, config.api_socket, None, None, socket_mode=int(config.api.socket_mode, 8),
                  socket_group=config.api.socket_group, read_only=True, announce=_announce)
    finally:
        sup.stop(drain=drain, progress=_progress)


@main.command()
@click.option("--assignments", type=click.Path(exists=True),
              help="Take assignments from this file/dir (then PUT /assignments is refused).")
@click.option("--socket", "socket_path", help="Unix socket path (default: api.socket, or <state_dir>/api.sock).")
@click.option("--tcp", help="Listen on HOST:PORT instead (needs api.token in the config).")
@click.option("--drain", is_flag=True, help="On exit, stop every worker (default: leave them running).")
@click.option("--storm", is_flag=True, help="Serve Storm's supervisor through berth's plugin: no assignments, no "
              "restarts, exits kept until the plugin has them (docs/storm.md).")
@click.pass_context
def serve(ctx: click.Context, /, assignments: str | None, socket_path: str | None, tcp: str | None,
          drain: bool, storm: bool) -> None:
    """Run the supervisor with its HTTP API (and /metrics)."""
    from .._service.server import serve as run_api

    config = get_config(ctx)
    if storm:
        for given, name in ((assignments, "--assignments"), (tcp, "--tcp"), (drain, "--drain")):
            if given:
                raise ConfigError(name, "not with --storm: Storm's supervisor decides what runs, and talks to berth "
                                  "on the unix socket only")
        _serve_storm(ctx, config, socket_path or config.api_socket)
        return
    tcp = tcp or config.api.tcp
    if tcp:
        try:
            check_listen_address(tcp)
        except ValueError as exc:
            raise ConfigError("tcp", str(exc)) from exc
    if tcp and not config.api.token:
        raise ConfigError("api.token", "a TCP listener needs a bearer token in the config")
    if not tcp:
        check_socket_group(config)
    check_apart(config, assignments, None if tcp else (socket_path or config.api_socket))
    sup = _make(ctx, assignments)
    _start(sup, drain)
    try:
        run_api(sup, socket_path or config.api_socket, tcp, config.api.token,
                socket_mode=int(config.api.socket_mode, 8), socket_group=config.api.socket_group,
                tenants=config.api.tenants, announce=_announce)
    finally:
        sup.stop(drain=drain, progress=_progress)


def check_storm_reaches(config: NodeConfig, socket: str, dirs: Any) -> None:
    """Storm's supervisor must be able to connect (the state dir, the default place of the
    socket, is root's alone): refused before anything starts, rather than every plugin call
    failing with EACCES."""
    import grp
    import pwd

    from .._core.limits import key_of
    from .._service.stormnode import socket_unreachable

    user = pwd.getpwuid(dirs.supervisor_uid)
    group = grp.getgrnam(config.api.socket_group).gr_gid if config.api.socket_group else os.getegid()
    why = socket_unreachable(socket, int(config.api.socket_mode, 8), group, user.pw_uid,
                             set(os.getgrouplist(user.pw_name, user.pw_gid)))
    if why:
        raise ConfigError(key_of(config, "api.socket"), f"{socket}: Storm's supervisor (user {user.pw_name}) could "
                          f"not connect: {why}; put it where it can, e.g. berth.api.socket: /run/berth/storm.sock "
                          f"with berth.api.socket.group: {grp.getgrgid(user.pw_gid).gr_name}")


def storm_routers(service: Any) -> list[Any]:
    """Routers served beside the plugin's under ``serve --storm``: the worker-launcher's
    (``berth-worker-launcher``, Storm's launcher without setuid)."""
    from .._service.launcher_api import launcher_router

    return [launcher_router(service)]


def _serve_storm(ctx: click.Context, config: NodeConfig, socket: str) -> None:
    import logging

    from .._node.stormdirs import StormDirs
    from .._service.server import serve as run_api
    from .._service.storm_api import create_storm_app, peer_protocol
    from .._service.stormnode import StormService

    check_socket_group(config)
    check_apart(config, None, socket)
    dirs = StormDirs.from_config(config)
    get_node(ctx).check_state()  # the state dir, made 0700 if missing: the default place of the socket
    check_storm_reaches(config, socket, dirs)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = StormService(config, node=get_node(ctx), dirs=dirs)
    service.start()
    try:
        run_api(service, socket, None, None, socket_mode=int(config.api.socket_mode, 8),
                socket_group=config.api.socket_group, announce=_announce,
                app=create_storm_app(service, routers=storm_routers(service)), protocol=peer_protocol(),
                stopping=service.ledger.close)
    finally:
        service.stop()
