"""``berth shim start|stop|status|upgrade``: the runc runtime's per-node monitor, by hand.

berth starts the shim on demand; these are for operators (see docs/runtimes.md): look at it,
stop it before a host maintenance, or re-execute it in place after upgrading berth. The CLI adds
this group (``commands``, named by the runtime's ``PLUGIN``) with its own way to load the config.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from ..._core.config import NodeConfig
from .runtime import RuncRuntime
from .shimclient import ShimClient

ConfigOf = Callable[[click.Context], NodeConfig]


def _client(ctx: click.Context) -> ShimClient:
    config_of: ConfigOf = ctx.find_root().obj["runtime_config"]
    return RuncRuntime(config_of(ctx)).shim


def commands(config_of: ConfigOf) -> click.Group:
    """The ``shim`` group, its commands loading the node config with ``config_of``."""

    @click.group(name="shim")
    @click.pass_context
    def group(ctx: click.Context) -> None:
        """The runc runtime's monitor (berth-shim): one per node, parent of every runc worker."""
        ctx.find_root().obj["runtime_config"] = config_of

    for command in (start, stop, status, upgrade):
        group.add_command(command)
    return group


@click.command()
@click.pass_context
def start(ctx: click.Context, /) -> None:
    """Start the shim unless it runs (berth also starts it on demand)."""
    client = _client(ctx)
    click.echo(f"berth-shim running, pid {client.start()} ({client.socket_path})")


@click.command()
@click.option("--force", is_flag=True, help="Stop even with workers running (their exit statuses are then lost).")
@click.pass_context
def stop(ctx: click.Context, /, force: bool) -> None:
    """Stop the shim; workers keep running. Refused while workers run, unless --force."""
    reply = _client(ctx).stop(force=force)
    click.echo(f"berth-shim (pid {reply['pid']}) stopping; workers keep running")


@click.command()
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


@click.command()
@click.pass_context
def upgrade(ctx: click.Context, /) -> None:
    """Re-execute the shim from the code now installed: same pid, containers stay its children."""
    reply = _client(ctx).upgrade()
    click.echo(f"berth-shim (pid {reply['pid']}) re-executing in place")
