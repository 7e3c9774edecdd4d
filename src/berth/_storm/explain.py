"""What ``explain`` says about Storm: Storm's own line for a request, and where berth differs.

The plan knows nothing of this: it is what berth launches. Storm's line is rebuilt from the plan
and the storm.yaml's spellings (``line``); the notes compare the request, the storm.yaml and the
plan; berth's own hardening refusals come from the policy's draft (``_core.plan.draft_plan``),
since Storm would launch such a request and its line is still worth showing.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .._core.config import NodeConfig
from .._core.hostfacts import HostFacts
from .._core.plan import Draft, Plan, draft_for
from .._core.spec import WorkerSpec
from .._runtimes.docker.render import docker_run_argv
from .line import storm_line
from .yaml import RUNC_PLUGIN


@dataclass(frozen=True)
class StormView:
    """A request as Storm's supervisor would launch it, beside what berth plans."""

    plan: Plan
    argv: tuple[str, ...]
    """Storm's ``docker run`` line (the tokens after ``docker``), token for token."""
    notes: tuple[str, ...]
    refusals: tuple[str, ...]
    """berth's hardening refusals: Storm would launch this, berth will not."""

    @property
    def line(self) -> str:
        return shlex.join(["docker", *self.argv])


def storm_notes(spec: WorkerSpec, config: NodeConfig, plan: Plan) -> tuple[str, ...]:
    """Where a storm.yaml's node behaves differently from Storm for this request, and why."""
    s = config.storm
    if s is None:
        return ()
    notes = []
    if s.worker_cpu_limit is not None and spec.cpu_percent not in (None, s.worker_cpu_limit):
        notes.append(f"cpu: storm.worker.cgroup.cpu.limit {s.worker_cpu_limit} replaces the request's "
                     f"{spec.cpu_percent}, as in Storm")
    zone = s.zone_for(spec.port)
    if zone is None and (spec.cores or spec.numa_node is not None):
        notes.append(f"cores: the request pins cpus {','.join(map(str, spec.cores or ())) or 'any'} and memory node "
                     f"{'any' if spec.numa_node is None else spec.numa_node}; Storm pins only by supervisor.numa.meta, "
                     "so its line has no --cpuset-cpus/--cpuset-mems")
    if zone is not None:
        notes.append(f"numa: port {spec.port} is in zone {zone.id} of supervisor.numa.meta: cores "
                     f"{','.join(map(str, zone.cores)) or 'any'}, memory node {zone.id}")
    r = plan.resources
    if not s.memory_enforcement:
        notes.append(f"memory: storm.cgroup.memory.enforcement.enable is false, so Storm's line has no --memory; "
                     f"berth limits the worker to {r.memory_mb} MiB with no swap beyond it")
    notes.append(f"berth adds its hardening after Storm's flags: --pids-limit={r.pids_limit}, "
                 f"--memory-swap={r.memory_mb}m, --init, labels (left out by --storm)")
    return tuple(notes)


def line_notes(config: NodeConfig) -> tuple[str, ...]:
    """What the reader of Storm's line must know about whose line it is."""
    s = config.storm
    if s is not None and s.plugin == RUNC_PLUGIN and s.plugin_enabled:
        return ("RuncLibContainerManager runs workers with runc, not docker run; the line is what Storm's "
                "DockerManager builds for this storm.yaml",)
    return ()


def storm_view(spec: WorkerSpec, config: NodeConfig, host: HostFacts | None = None) -> StormView:
    """Storm's line for ``spec`` on this node, with the notes and berth's refusals."""
    return storm_view_of(spec, config, draft_for(spec, config, host))


def storm_view_of(spec: WorkerSpec, config: NodeConfig, draft: Draft) -> StormView:
    plan, refusals = draft
    return StormView(plan, tuple(docker_run_argv(plan, storm_line(config, plan))), storm_notes(spec, config, plan),
                     tuple(str(e) for e in refusals))
