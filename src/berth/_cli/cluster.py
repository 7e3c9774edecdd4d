"""The cluster commands: ``berth agent``, ``berth schedule`` and ``berth cluster …``.

Shells over ``berth._cluster``; imported lazily so that the node commands start as fast as before.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._core.clusterconfig import ClusterSection
from .._core.config import NodeConfig
from .._core.printable import printable
from .._exceptions import ClusterError
from .app import get_config, get_node, main, setup_logging

if TYPE_CHECKING:
    from .._cluster.layout import Credential
    from .._cluster.scheduler import Coordinator
    from .._cluster.waiting import Convergence

F = TypeVar("F", bound=Callable[..., Any])
EXIT_NOT_CONVERGED = 3


def zk_options(fn: F) -> F:
    options = [
        click.option("--zk", envvar="BERTH_ZK", help="ZooKeeper hosts host:port,… (default: cluster.zk)."),
        click.option("--auth", "auth_file", envvar="BERTH_ZK_AUTH", type=click.Path(dir_okay=False),
                     help="This identity's user:password file, mode 0600 (default: cluster.auth_file)."),
        click.option("--root", help="The znode berth keeps the cluster under (default: cluster.root, /berth)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _settings(ctx: click.Context, zk: str | None, auth_file: str | None, root: str | None,
              **extra: Any) -> tuple[ClusterSection, str, str]:
    cfg = get_config(ctx).cluster
    update = {k: v for k, v in {"zk": zk, "auth_file": auth_file and os.path.abspath(auth_file), "root": root,
                                **extra}.items() if v is not None}
    settings = ClusterSection.model_validate({**cfg.model_dump(), **update})
    if not settings.zk:
        raise ClusterError("zk", "no ZooKeeper hosts: give --zk, $BERTH_ZK or cluster.zk")
    if not settings.auth_file:
        raise ClusterError("auth_file", "no identity: give --auth, $BERTH_ZK_AUTH or cluster.auth_file")
    return settings, settings.zk, settings.auth_file


def _credential(path: str) -> Credential:
    from .._cluster.layout import read_credential

    return read_credential(path)


def _logging() -> None:
    import logging

    setup_logging()
    logging.getLogger("kazoo.client").setLevel(logging.WARNING)


@main.command()
@zk_options
@click.option("--node", "node_name", help="This node's name (default: node.name of the config).")
@click.option("--fence-after", type=float, help="Stop every worker after this many seconds without ZooKeeper, "
                                                "and before the coordinator may move them (default: off; workers "
                                                "keep running, as in Storm).")
@click.option("--socket", "socket_path", help="API socket (default: api.socket, or <state_dir>/api.sock).")
@click.option("--no-api", is_flag=True, help="Do not serve the HTTP API.")
@click.option("--drain", is_flag=True, help="On exit, stop every worker (default: leave them running).")
@click.pass_context
def agent(ctx: click.Context, /, zk: str | None, auth_file: str | None, root: str | None, node_name: str | None,
          fence_after: float | None, socket_path: str | None, no_api: bool, drain: bool) -> None:
    """Run this node's supervisor with its assignments from ZooKeeper."""

    from .._cluster.agent import Agent
    from .._service.supervisor import Supervisor
    from .service import refuse_storm_node

    obj = ctx.find_root().obj
    config: NodeConfig = get_config(ctx)
    refuse_storm_node(config)  # before ZooKeeper: Storm's supervisor runs this node's workers
    if node_name:
        config = NodeConfig.model_validate({**config.model_dump(), "node": {**config.node.model_dump(),
                                                                            "name": node_name}})
        obj["config"] = config
    settings, hosts, auth = _settings(ctx, zk, auth_file, root, fence_after_s=fence_after)
    if not no_api:
        from .service import check_socket_group

        check_socket_group(config)
    _logging()
    cred = _credential(auth)
    sup = Supervisor(get_node(ctx))
    ag = Agent(sup, hosts, cred, settings)
    ag.start()
    click.echo(f"agent {config.node.name}: ZooKeeper {hosts}, document {ag.layout.assignment(config.node.name)}, "
               f"status {ag.dir}/status.json", err=True)
    try:
        if no_api:
            from .service import wait_for_stop_signal

            wait_for_stop_signal()
        else:
            from .._cluster.health import serve_agent

            serve_agent(ag, socket_path or config.api_socket, config)
    finally:
        ag.stop(drain=drain)


def _coordinator(ctx: click.Context, zk: str | None, auth_file: str | None, root: str | None,
                 dead_after: float | None = None) -> Coordinator:
    from .._cluster.scheduler import Coordinator

    settings, hosts, auth = _settings(ctx, zk, auth_file, root)
    co = Coordinator(hosts, _credential(auth), settings, dead_after if dead_after is not None
                     else max(30.0, 3 * settings.session_timeout_s))
    co.connect()
    ctx.call_on_close(co.close)
    return co


@main.command()
@zk_options
@click.argument("topologies", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--follow", is_flag=True, help="Stay the active coordinator: move a dead node's workers, apply "
                                             "changed topologies (one coordinator is active at a time).")
@click.option("--wait", "wait_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for every live node to apply its document and run its workers (0: do not).")
@click.option("--dead-after", type=float, help="Seconds a node must be gone before its workers move "
                                               "(default: 3 session timeouts, at least 30).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def schedule(ctx: click.Context, /, zk: str | None, auth_file: str | None, root: str | None,
             topologies: str | None, follow: bool, wait_s: float, dead_after: float | None, as_json: bool) -> None:
    """Place the workers of TOPOLOGIES (YAML: topologies: {id: {user, command, workers, …}}) on live nodes."""
    from .._cluster.placement import read_topologies

    co = _coordinator(ctx, zk, auth_file, root, dead_after)
    if topologies:
        co.store_topologies(read_topologies(topologies))
    elif not follow:
        raise click.UsageError("give a TOPOLOGIES file, or --follow to coordinate the stored ones")
    if follow:
        _follow(co)
        return
    rolling: dict[str, int] = {}
    if co.acquire(blocking=False):
        try:  # no active coordinator: this command drives a rolling replacement to its end itself
            result = co.roll_out(wait_s)
        finally:
            co.lock.release()
        versions, unplaced, rolling = result.versions, result.placement.unplaced, result.placement.rolling
    else:
        click.echo(f"coordinator {co.active_coordinator()} is active: it applies the topologies", err=True)
        versions, unplaced = co.wait_for_pass(co.read_topologies()[1], max(wait_s, 60.0))
    conv = co.converge(versions, wait_s) if wait_s > 0 else None
    _report(versions, unplaced, conv, as_json, rolling)
    if unplaced or rolling or (conv is not None and not conv.done):
        ctx.exit(EXIT_NOT_CONVERGED)


def _follow(co: Coordinator) -> None:
    import signal

    _logging()
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()
        co.cancel_wait()
        co._poke()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if not co.acquire(blocking=False):
        click.echo(f"waiting for the active coordinator ({co.active_coordinator()}) to go", err=True)
        if not co.wait_for_lock(stop):
            return
    click.echo(f"active coordinator {co.identifier}", err=True)
    co.follow(stop)


def _report(versions: dict[str, str], unplaced: dict[str, int], conv: Convergence | None, as_json: bool,
            rolling: dict[str, int]) -> None:
    if as_json:
        click.echo(json.dumps({"versions": versions, "unplaced": unplaced, "rolling": rolling,
                               "converged": conv.done if conv else None, "nodes": conv.nodes if conv else {}},
                              indent=2))
        return

    def say(text: str) -> None:  # what nodes report is theirs to write
        click.echo(printable(text))

    for tid, n in sorted(unplaced.items()):
        say(f"unplaced: {n} worker(s) of {tid}: no live node has a free port and enough cpu and memory")
    for tid, n in sorted(rolling.items()):
        say(f"rolling: {n} worker(s) of {tid} still on the old spec (the replaced ones did not run in time; "
            "berth schedule --follow, or schedule again, goes on)")
    if conv is None:
        say("written: " + ", ".join(f"{n}={v}" for n, v in sorted(versions.items())))
        return
    for name, r in sorted(conv.nodes.items()):
        if not r["live"]:
            say(f"{name}: not live (document {r['want']} waits for it)")
        elif r.get("rejected"):
            say(f"{name}: REJECTED document {r['want']}: {r['rejected']}")
        elif r.get("rejections"):
            say(f"{name}: applied {r['applied']} of {r['want']} with {len(r['rejections'])} entries rejected, "
                f"{r['running']}/{r['workers']} running")
            for line in r["rejections"]:
                say(f"  rejected: {line}")
        else:
            say(f"{name}: applied {r['applied'] or '-'} of {r['want']}, {r['running']}/{r['workers']} running")
    say("converged" if conv.done else "NOT converged")


@main.group()
def cluster() -> None:
    """Set up and inspect the cluster in ZooKeeper (with the coordinator's identity)."""


@cluster.command(name="init")
@zk_options
@click.option("--lock-ensemble", is_flag=True,
              help="Give ZooKeeper's /, /zookeeper and /zookeeper/quota to the coordinator (everyone may still "
                   "read): for an ensemble that is berth's alone.")
@click.pass_context
def cluster_init(ctx: click.Context, /, zk: str | None, auth_file: str | None, root: str | None,
                 lock_ensemble: bool) -> None:
    """Create berth's tree, readable and writable by the coordinator alone, and say what of the
    ensemble stays open: whether the servers enforce the quotas that bound each node's znodes, and
    whether ZooKeeper's own top is writable by anyone (digest accepts made-up identities).

    A missing --auth file is created first with a new coordinator identity (mode 0600).
    """
    from .._cluster.admin import init_cluster
    from .._cluster.layout import ZkLayout, new_credential, write_credential
    from .._cluster.quota import lock_ensemble as lock
    from .._cluster.quota import open_tops, quotas_enforced
    from .._cluster.zk import Connection

    settings, hosts, auth = _settings(ctx, zk, auth_file, root)
    if not os.path.exists(auth):
        write_credential(auth, new_credential("berth-coordinator"))
        click.echo(f"new coordinator identity in {auth}")
    cred = _credential(auth)
    conn = Connection(hosts, cred, settings.session_timeout_s, patient=True)
    conn.start_and_wait(15.0)
    try:
        made = init_cluster(conn, ZkLayout(settings.root), cred)
        enforced = quotas_enforced(conn, ZkLayout(settings.root), cred)
        locked = lock(conn, cred) if lock_ensemble else []
        still_open = open_tops(conn)
    finally:
        conn.close()
    click.echo(f"{settings.root}: " + (f"created {', '.join(made)}" if made else "exists, owned by this identity"))
    click.echo("quotas: " + {True: "enforced (each node's directory is bounded)",
                             False: "NOT enforced by the servers: a node's identity can create any number of znodes "
                                    "under its directory (enforceQuota=true in every zoo.cfg; docs/cluster.md)",
                             None: "cannot be set: /zookeeper/quota is not writable by this identity "
                                   "(docs/cluster.md)"}[enforced])
    if locked:
        click.echo(f"locked {', '.join(locked)}: only the coordinator may create there (everyone may read)")
    if still_open:
        click.echo(f"open: {', '.join(still_open)} can be written by any client that authenticates (a made-up "
                   "digest identity will do); on an ensemble that is berth's alone: berth cluster init "
                   "--lock-ensemble")


@cluster.command(name="add-node")
@zk_options
@click.argument("name")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the node's new identity (user:password, mode 0600); copy it to the node.")
@click.option("--rotate", is_flag=True, help="The node is enrolled: give it a new identity (the old one stops).")
@click.pass_context
def cluster_add_node(ctx: click.Context, /, zk: str | None, auth_file: str | None, root: str | None, name: str,
                     out: str, rotate: bool) -> None:
    """Enrol node NAME: its own identity, its assignment, registration and state znodes, their ACLs."""
    from .._cluster.admin import add_node
    from .._cluster.layout import ZkLayout, new_credential, node_user, write_credential
    from .._cluster.zk import Connection

    settings, hosts, auth = _settings(ctx, zk, auth_file, root)
    cred = _credential(auth)
    node_cred = new_credential(node_user(name))
    write_credential(out, node_cred)
    conn = Connection(hosts, cred, settings.session_timeout_s, patient=True)
    try:
        conn.start_and_wait(15.0)
        notes = add_node(conn, ZkLayout(settings.root), cred, name, node_cred.digest_id, rotate=rotate)
    except BaseException:
        os.unlink(out)  # nothing half-made: no identity without its enrolment
        raise
    finally:
        conn.close()
    click.echo(f"node {name} enrolled; its identity is in {out} (berth agent --auth {out})")
    for note in notes:
        click.echo(f"note: {note}", err=True)


@cluster.command(name="remove-node")
@zk_options
@click.argument("name")
@click.option("--drain", is_flag=True, help="A live node: place its workers on other nodes, wait until they run "
                                            "there, stop its own, then remove it.")
@click.option("--wait", "wait_s", type=float, default=300.0, show_default=True,
              help="Seconds a drain may take (past them it is undone).")
@click.pass_context
def cluster_remove_node(ctx: click.Context, /, zk: str | None, auth_file: str | None, root: str | None,
                        name: str, drain: bool, wait_s: float) -> None:
    """Remove node NAME's znodes (its identity stops working). A live node is refused unless --drain."""
    from .._cluster.removal import remove

    co = _coordinator(ctx, zk, auth_file, root)
    remove(co, name, drain, wait_s, lambda line: click.echo(line, err=True))
    click.echo(f"node {name} removed")


@cluster.command(name="ps")
@zk_options
@click.option("--json", "as_json", is_flag=True, help="Nodes and workers as JSON.")
@click.pass_context
def cluster_ps(ctx: click.Context, /, zk: str | None, auth_file: str | None, root: str | None,
               as_json: bool) -> None:
    """Nodes (live, capacity, used, applied version) and every worker by node."""
    from rich.console import Console

    from .._cluster.admin import read_cluster
    from .._cluster.drains import read_drains
    from .cluster_views import cluster_rows, cluster_tables

    co = _coordinator(ctx, zk, auth_file, root)
    nodes, workers = cluster_rows(read_cluster(co.conn, co.layout), co.settings, read_drains(co.conn, co.layout)[0])
    if as_json:
        click.echo(json.dumps({"nodes": nodes, "workers": workers}, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 160)
    for table in cluster_tables(nodes, workers):
        console.print(table)
