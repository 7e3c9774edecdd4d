"""``berth shim start|stop|status|upgrade``: the runc runtime's per-node monitor, by hand.

berth starts the shim on demand; these are for operators (see docs/runtimes.md): look at it,
stop it before a host maintenance, or re-execute it in place after upgrading berth.
"""

from __future__ import annotations

import click

from .._runtimes.runc import RuncRuntime
from .._runtimes.shimclient import ShimClient
from .app import get_config, main


def _client(ctx: click.Context) -> ShimClient:
    return RuncRuntime(get_config(ctx)).shim


@main.group()
def shim() -> None:
    """The runc runtime's monitor (berth-shim): one per node, parent of every runc worker."""


@shim.command()
@click.pass_context
def start(ctx: click.Context, /) -> None:
    """Start the shim unless it runs (berth also starts it on demand)."""
    client = _client(ctx)
    click.echo(f"berth-shim running, pid {client.start()} ({client.socket_path})")


@shim.command()
@click.option("--force", is_flag=True, help="Stop even with workers running (their exit statuses are then lost).")
@click.pass_context
def stop(ctx: click.Context, /, force: bool) -> None:
    """Stop the shim; workers keep running. Refused while workers run, unless --force."""
    reply = _client(ctx).stop(force=force)
    click.echo(f"berth-shim (pid {reply['pid']}) stopping; workers keep running")


@shim.command()
@click.pass_context
def status(ctx: click.Context, /) -> None:
    """Whether the shim runs, and what it watches. Exit status 1 when it does not run."""
    client = _client(ctx)
    if not client.running():
        click.echo(f"berth-shim not running ({client.socket_path})")
        ctx.exit(1)
    h = client.hello()
    click.echo(f"berth-shim pid {h['pid']} version {h['version']} since {h['started_at']} "
               f"(re-executed {h['execs']} times)")
    click.echo(f"  containers {h['containers']} (adopted, status will be lost: {h['adopted']}), "
               f"exits not yet acknowledged {h['pending']}, launches under way {h['launching']}")
    click.echo(f"  threads {h['threads']}, RSS {h['rss_bytes'] / 2**20:.1f} MiB, outputs drained {h.get('outputs', 0)}"
               f" (bytes dropped on a full disk: {h.get('output_dropped_bytes', 0)}), "
               f"exits not yet written {h.get('unwritten', 0)}")


@shim.command()
@click.pass_context
def upgrade(ctx: click.Context, /) -> None:
    """Re-execute the shim from the code now installed: same pid, containers stay its children."""
    reply = _client(ctx).upgrade()
    click.echo(f"berth-shim (pid {reply['pid']}) re-executing in place")
