"""The ``berth`` command group and what every command shares: the node config and the node,
each made once per invocation, and one line per error (``error: <field>: <reason>``, status 125,
``docker run``'s code for "the launcher failed", so ``launch --wait`` passes exit codes through).
Command modules (commands, service, cluster, shim) register themselves on ``main``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import click

from .._core.config import NodeConfig
from .._core.printable import printable
from .._exceptions import BerthError
from .._storm.loading import load_config

if TYPE_CHECKING:
    from .._node.node import Node
    from .._node.stormdirs import StormDirs

EXIT_BERTH_ERROR = 125


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BerthError as exc:
            click.echo(printable(f"error: {exc}"), err=True)  # it may quote names others chose
            ctx.exit(EXIT_BERTH_ERROR)


@click.group(cls=_Group)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="BERTH_CONFIG",
              help="Node config: berth.toml, or a Storm storm.yaml.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """berth: launch cluster workers in hardened containers, watch them, report how they ended."""
    ctx.obj = {"config_path": config_path}


def get_config(ctx: click.Context) -> NodeConfig:
    obj = ctx.find_root().obj
    if "config" not in obj:
        obj["config"] = load_config(obj["config_path"])
        for note in obj["config"].storm.notes if obj["config"].storm else ():
            click.echo(f"note: {note}", err=True)
    config: NodeConfig = obj["config"]
    return config


def add_runtime_commands() -> None:
    """Each built-in runtime's own command group (``RuntimePlugin.commands``), on ``main``."""
    import importlib

    from .._runtimes.registry import names, plugin

    for name in names():
        target = plugin(name).commands
        if target is not None:
            module, _, attr = target.partition(":")
            main.add_command(getattr(importlib.import_module(module), attr)(get_config))


def storm_dirs(config: NodeConfig) -> StormDirs | None:
    """Storm's supervisor makes the workers' dirs on a node whose storm.yaml names berth's plugin
    (and says who the supervisor is): ``berth rm`` and the rest then leave Storm's files to it."""
    from .._node.stormdirs import StormDirs
    from .._storm.yaml import BERTH_PLUGIN

    s = config.storm
    if s is None or s.plugin != BERTH_PLUGIN or not s.plugin_enabled or s.supervisor_user is None:
        return None
    return StormDirs.from_config(config)


def get_node(ctx: click.Context) -> Node:
    from .._node.node import Node

    obj = ctx.find_root().obj
    if "node" not in obj:
        obj["node"] = Node(get_config(ctx), dirs=storm_dirs(get_config(ctx)))
        ctx.find_root().call_on_close(obj["node"].close)
    node: Node = obj["node"]
    return node


class _Escaped(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(record.getMessage()), None
        return True


def escape_logs(handler: logging.Handler) -> None:
    """Log messages quote names and reasons others wrote (assignment files, the API, the engine, what
    nodes publish): each message reaches the log one line, escaped."""
    handler.addFilter(_Escaped())


def setup_logging() -> None:
    """The services' log: one escaped line per message, on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        escape_logs(handler)
