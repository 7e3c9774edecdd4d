"""The ``berth`` command line.

Every command is a thin shell over the Python API. A ``BerthError`` becomes one line,
``error: <field>: <reason>``, and exit status 125 (``docker run``'s code for "the launcher
failed", so ``berth launch --wait`` can pass the worker's own exit codes through untouched).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .._core.hostfacts import HostFacts, parse_cpu_list
from .._core.plan import Plan, plan_for
from .._core.printable import printable
from .._core.render import text_summary
from .._core.spec import WorkerSpec, read_spec_file, spec_from_mapping
from .._exceptions import BerthError, ConfigError, SpecError
from .._runtimes.docker.render import docker_run_line, engine_create_body, read_seccomp
from .._runtimes.seccomp import Filters
from .._storm.explain import line_notes, storm_notes, storm_view
from .._storm.yaml import load_storm_yaml
from .app import EXIT_BERTH_ERROR, get_config, get_node, main
from .service import supervisor_view
from .views import ps_notes, ps_rows, ps_table, rejection_line, with_supervisor

F = TypeVar("F", bound=Callable[..., Any])


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
    """Show the container a launch would create, without creating anything.

    With a storm.yaml, where berth differs from Storm is said on stderr (or in --format text).
    """
    config = get_config(ctx)
    spec = spec_from_options(opts)
    if storm:
        view = storm_view(spec, config)
        click.echo(printable(view.line))
        for note in (*line_notes(config), *view.notes):
            click.echo(f"note: {note}", err=True)
        for refusal in view.refusals:
            click.echo(f"note: Storm would launch this; berth refuses: {refusal}", err=True)
        return
    plan = plan_for(spec, config)
    notes = storm_notes(spec, config, plan)
    # A spec file may be a tenant's: what it says is shown escaped (JSON escapes its own).
    if fmt == "text":
        text = text_summary(plan, config.storm.unused_keys if config.storm else (), notes).split("\n")
        click.echo("\n".join(printable(x) for x in [*text, *_capacity(ctx, plan)]))
        return
    if fmt == "docker":
        click.echo(printable(docker_run_line(plan)))
    else:
        body = engine_create_body(plan, seccomp_json=read_seccomp(plan, Filters.of(config)))
        click.echo(json.dumps({"name": plan.worker_id, "body": body}, indent=2))
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _capacity(ctx: click.Context, plan: Plan) -> list[str]:
    """The node's capacity, what its workers hold now (one listing; nothing written) and whether
    this worker fits."""
    from .._core.limits import capacity_lines, node_capacity

    config = get_config(ctx)
    try:
        cap = node_capacity(config, HostFacts.probe())
    except BerthError as exc:
        return [f"capacity  unknown: {exc}"]
    try:
        node = get_node(ctx)  # the runtime: an engine that is down is said, not an error of explain
        return capacity_lines(cap, node.usage(launching=False), node.usage_of(plan))
    except BerthError as exc:
        return capacity_lines(cap, None, None, str(exc))


@main.command(name="config")
@click.option("--from-storm", "storm_yaml", type=click.Path(dir_okay=False),
              help="Print the berth.toml equivalent to this storm.yaml.")
@click.pass_context
def config_(ctx: click.Context, /, storm_yaml: str | None) -> None:
    """Print the node config as berth.toml (only what differs from berth's defaults)."""
    from .._core.tomlout import config_toml

    source = storm_yaml or ctx.find_root().obj["config_path"] or "berth's defaults"
    config = load_storm_yaml(storm_yaml) if storm_yaml else get_config(ctx)
    for note in config.storm.notes if storm_yaml and config.storm else ():
        click.echo(f"note: {note}", err=True)
    click.echo(config_toml(config, f"berth.toml equivalent to {source}\n(berth config --from-storm; docs/storm.md)"
                           if storm_yaml else f"the node config from {source}"), nl=False)


@main.command()
@spec_options
@click.option("--wait", is_flag=True, help="Wait for the worker to end and exit with its exit code.")
@click.pass_context
def launch(ctx: click.Context, /, wait: bool, **opts: Any) -> None:
    """Launch a worker; print its container id."""
    node = get_node(ctx)
    spec = spec_from_options(opts)
    handle = node.launch(spec, on_exit=(lambda rec: None) if wait else None)
    click.echo(handle.container_id)
    if wait:
        rec = node.wait(spec.worker_id)
        if rec.signal or rec.status_lost:
            click.echo(printable(f"{rec.worker_id}: {rec.how}"), err=True)
        ctx.exit(EXIT_BERTH_ERROR if rec.exit_code is None else rec.exit_code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects.")
@click.pass_context
def ps(ctx: click.Context, /, as_json: bool) -> None:
    """List this node's workers with state, exit code, OOM and memory."""
    rows = ps_rows(get_node(ctx))
    view = supervisor_view(get_config(ctx))
    rejected: list[dict[str, Any]] = []
    if view is not None:
        rows = with_supervisor(rows, view["workers"], view["rejected"])
        rejected = view["rejected"]
    if as_json:
        for r in rows:
            r.pop("uptime")
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(ps_table(get_node(ctx), rows))
    for line in [*ps_notes(rows), *(rejection_line(r) for r in rejected)]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@main.command()
@click.argument("worker_id")
@click.option("--force", is_flag=True, help="SIGKILL at once.")
@click.option("--grace", type=float, default=10.0, show_default=True, help="Seconds between SIGTERM and SIGKILL.")
@click.pass_context
def kill(ctx: click.Context, /, worker_id: str, force: bool, grace: float) -> None:
    """Stop a worker (SIGTERM, then SIGKILL after the grace period)."""
    node = get_node(ctx)
    node.force_kill(worker_id) if force else node.kill(worker_id, grace)
    st, rec = node.inspect(worker_id), node.exit_record(worker_id)
    click.echo(printable(f"{worker_id}: {st.state}, {rec.brief() if rec is not None else f'exit code {st.exit_code}'}"))


@main.command()
@click.argument("worker_id")
@click.pass_context
def rm(ctx: click.Context, /, worker_id: str) -> None:
    """Remove a worker's container and directories (its artifacts stay)."""
    node = get_node(ctx)
    node.inspect(worker_id)  # a clear error for an unknown worker
    node.cleanup(worker_id)
    click.echo(printable(f"{worker_id}: removed"))


@main.command()
@click.argument("worker_id")
@click.pass_context
def mem(ctx: click.Context, /, worker_id: str) -> None:
    """Print a running worker's memory usage in bytes, read from its cgroup."""
    click.echo(get_node(ctx).memory_usage(worker_id))


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("worker_id")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, /, worker_id: str, argv: tuple[str, ...]) -> None:
    """Run a command inside a worker's container as the worker's user."""
    res = get_node(ctx).exec(worker_id, argv)
    sys.stdout.buffer.write(res.output)
    sys.stdout.flush()
    ctx.exit(res.exit_code)


@main.command()
@click.argument("worker_id")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the worker ends.")
@click.pass_context
def logs(ctx: click.Context, /, worker_id: str, tail: int | None, follow: bool) -> None:
    """Print a worker's output (streamed: a large log is never held in memory)."""
    out = sys.stdout.buffer
    for chunk in get_node(ctx).logs(worker_id, tail=tail, follow=follow):
        out.write(chunk)
        if follow:
            out.flush()
    out.flush()


@main.command()
@click.pass_context
def recover(ctx: click.Context, /) -> None:
    """Adopt this node's workers after a restart: report exits, remove half-made containers."""
    report = get_node(ctx).recover()  # ids come from labels, which a container made by hand chose
    click.echo(printable(f"adopted {len(report.adopted)} running: {' '.join(report.adopted) or '-'}"))
    for rec in report.reported:
        click.echo(printable(f"exited while berth was down: {rec.worker_id}: {rec.how}"))
    click.echo(printable(f"removed {len(report.removed)} half-made: {' '.join(report.removed) or '-'}"))


@main.command()
@click.option("--cluster", "cluster_mode", is_flag=True,
              help="Three agents and a coordinator on ZooKeeper ($BERTH_ZK): see docs/cluster.md.")
@click.option("--zk", envvar="BERTH_ZK", help="ZooKeeper hosts for --cluster.")
@click.option("--storm", "storm_mode", is_flag=True, help="A real Storm cluster whose workers berth isolates "
              "($BERTH_STORM_SCRIPT: scripts/storm; $BERTH_STORM_PLUGIN_JAR: berth's plugin): see docs/storm.md.")
@click.option("--runtime", type=click.Choice(["docker", "runc"]), help="Run the demo on this runtime "
              "(default: the config's node.runtime; docker for --storm).")
@click.pass_context
def demo(ctx: click.Context, /, cluster_mode: bool, zk: str | None, storm_mode: bool, runtime: str | None) -> None:
    """Run a small topology end to end: limits, OOM, graceful kill, exit codes, cleanup."""
    from rich.console import Console

    if storm_mode:
        from pathlib import Path

        from .storm_demo import run_storm_demo

        script, jar = os.environ.get("BERTH_STORM_SCRIPT"), os.environ.get("BERTH_STORM_PLUGIN_JAR")
        if not script or not jar:
            raise ConfigError("storm", "the Storm demo needs $BERTH_STORM_SCRIPT (scripts/storm) and "
                              "$BERTH_STORM_PLUGIN_JAR (storm-plugin/target/*.jar): run ./scripts/demo --storm")
        console = Console(width=None if sys.stdout.isatty() else 132)
        ctx.exit(run_storm_demo(console, runtime or "docker", script, jar, Path("/var/lib/berth-dev/storm-demo")))
    if runtime:
        config = get_config(ctx)
        ctx.find_root().obj["config"] = config.model_copy(
            update={"node": config.node.model_copy(update={"runtime": runtime})})

    console = Console(width=None if sys.stdout.isatty() else 132)
    if cluster_mode:
        from .cluster_demo import run_cluster_demo, zk_control_from_env

        if not zk:
            raise ConfigError("zk", "the cluster demo needs ZooKeeper: --zk or $BERTH_ZK (scripts/zookeeper env)")
        ctx.exit(run_cluster_demo(get_config(ctx), zk, zk_control_from_env(), console))
    from .demo import run_demo

    ctx.exit(run_demo(get_node(ctx), console))



EXIT_AUDIT_FAILED = 1


@main.command()
@click.argument("worker_id", required=False)
@click.option("--all", "all_workers", is_flag=True, help="Audit every running worker of this node.")
@click.option("--json", "as_json", is_flag=True, help="JSON: one report object (a list with --all).")
@click.pass_context
def audit(ctx: click.Context, /, worker_id: str | None, all_workers: bool, as_json: bool) -> None:
    """Check from the host that a running worker gets exactly what berth would plan for it.

    One line per check (capabilities, no-new-privileges, seccomp, ids, mounts, cgroup limits,
    network namespace) with the observed and expected values; exit status 1 if any check fails.
    --all also fails on unboxed processes under the node's cgroup parent that are no worker of it.
    """
    from .._node.audit import audit_all, audit_worker, report_lines
    from .._node.audit_parent import parent_report

    if bool(worker_id) == all_workers:
        raise click.UsageError("give a worker id or --all (not both)")
    node = get_node(ctx)
    reports = audit_all(node) if all_workers else [audit_worker(node, worker_id or "")]
    strangers = parent_report(node) if all_workers else None  # unboxed processes of no worker, under the parent
    if strangers is not None:
        reports.append(strangers)
    if as_json:
        data: Any = [r.to_dict() for r in reports] if all_workers else reports[0].to_dict()
        click.echo(json.dumps(data, indent=2))
    else:
        for line in report_lines(reports):
            click.echo(printable(line))  # observed values: process names, mount paths
        if all_workers and not reports:
            click.echo("no running workers to audit")
    ctx.exit(0 if all(r.ok for r in reports) else EXIT_AUDIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
