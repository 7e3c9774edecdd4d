"""The ``berth`` command line.

Every command is a thin shell over the Python API. A ``BerthError`` becomes one line,
``error: <field>: <reason>``, and exit status 125 (``docker run``'s code for "the launcher
failed", so ``berth launch --wait`` can pass the worker's own exit codes through untouched).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ._config import NodeConfig, load_config
from ._exceptions import BerthError, SpecError
from ._host import parse_cpu_list
from ._plan import plan_for
from ._render import docker_run_line, engine_create_body, text_summary
from ._spec import WorkerSpec, read_spec_file, spec_from_mapping

EXIT_BERTH_ERROR = 125
F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BerthError as exc:
            click.echo(f"error: {exc}", err=True)
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
    config: NodeConfig = obj["config"]
    return config


def spec_options(fn: F) -> F:
    """The options of a launch request, shared by ``explain`` and ``launch``."""
    options = [
        click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
                     help="YAML or JSON worker spec; options given as well override its keys."),
        click.option("--worker-id"), click.option("--topology"),
        click.option("--port", type=int), click.option("--user"), click.option("--image"),
        click.option("--cpu", type=int, help="CPU percent; 100 = one core."),
        click.option("--memory", type=int, help="Memory limit in MiB."),
        click.option("--cores", help="cpuset, e.g. 0,2-3."),
        click.option("--numa", type=int, help="Memory node (cpuset mems)."),
        click.option("--pids", type=int, help="Process limit."),
        click.option("--env", "env", multiple=True, metavar="K=V"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def spec_from_options(opts: dict[str, Any]) -> WorkerSpec:
    data: dict[str, Any] = read_spec_file(opts["spec_file"]) if opts.get("spec_file") else {}
    simple = {"worker_id": "worker_id", "topology": "topology_id", "port": "port", "user": "user",
              "image": "image", "cpu": "cpu_percent", "memory": "memory_mb", "numa": "numa_node",
              "pids": "pids_limit"}
    for opt, key in simple.items():
        if opts.get(opt) is not None:
            data[key] = opts[opt]
    if opts.get("cores"):
        try:
            data["cores"] = tuple(sorted(parse_cpu_list(opts["cores"])))
        except ValueError:
            raise SpecError("cores", f"{opts['cores']!r} is not a cpu list like 0,2-3") from None
    if opts.get("env"):
        env = dict(data.get("env") or {})
        for item in opts["env"]:
            name, eq, value = item.partition("=")
            if not eq:
                raise SpecError("env", f"{item!r} must be NAME=VALUE")
            env[name] = value
        data["env"] = env
    if opts.get("command"):
        data["command"] = tuple(opts["command"])
    return spec_from_mapping(data)


@main.command()
@spec_options
@click.option("--format", "fmt", type=click.Choice(["docker", "engine", "text"]), default="docker",
              show_default=True)
@click.option("--storm", is_flag=True, help="Exactly Storm's docker run line (no berth additions).")
@click.pass_context
def explain(ctx: click.Context, /, fmt: str, storm: bool, **opts: Any) -> None:
    """Show the container a launch would create, without creating anything."""
    config = get_config(ctx)
    plan = plan_for(spec_from_options(opts), config)
    if fmt == "docker" or storm:
        click.echo(docker_run_line(plan, storm=storm))
    elif fmt == "engine":
        seccomp = None
        if plan.security.seccomp_profile:
            with open(plan.security.seccomp_profile, encoding="utf-8") as fh:
                seccomp = fh.read()
        body = engine_create_body(plan, seccomp_json=seccomp)
        click.echo(json.dumps({"name": plan.worker_id, "body": body}, indent=2))
    else:
        click.echo(text_summary(plan))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
