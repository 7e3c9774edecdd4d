"""berth: launch the workers of a multi-tenant cluster node in hardened containers.

The public API is what this module exports (``__all__``, pinned by tests/unit/test_public_api.py);
everything in ``berth._*`` is private and may change. The layers underneath, lowest first (each
imports only its own and lower ones, tests/unit/test_layers.py): ``_linux`` (cgroups, mount tables,
/proc), ``_core`` (request, config, plan, renderers), ``_runtimes`` (docker, runc, process, fake),
``_node`` (launch, watch, audit), ``_service`` (supervisor, HTTP API), ``_cluster`` (ZooKeeper agent,
scheduler), ``_cli``.
"""

from ._core.config import NodeConfig
from ._core.hostfacts import HostFacts
from ._core.identity import Identity, resolve_identity
from ._core.plan import Mount, Plan, Resources, Security, build_plan, plan_for
from ._core.render import text_summary
from ._core.spec import WorkerSpec, load_spec, spec_from_mapping
from ._exceptions import (
    BerthError,
    CapacityError,
    CleanupError,
    ConfigError,
    EngineError,
    IdentityError,
    LaunchError,
    PolicyError,
    SpecError,
    StateError,
    SupervisorLocked,
    WaitTimeout,
    WorkerNotFound,
    WorkerNotRunning,
)
from ._node.audit import AuditReport, audit_all, audit_worker
from ._node.check import Check
from ._node.node import Launched, Node, RecoveryReport, WorkerHandle
from ._node.workdirs import prepare as prepare_worker_dirs
from ._node.workdirs import remove as remove_worker_dirs
from ._runtimes.base import (
    Capabilities,
    ExecResult,
    ExitRecord,
    Runtime,
    WorkerDescription,
    WorkerState,
    WorkerStatus,
)
from ._runtimes.docker.render import docker_run_argv, docker_run_line, engine_create_body
from ._runtimes.registry import RuntimePlugin
from ._runtimes.registry import register as register_runtime
from ._service.assignments import Assignments, Rejection, load_assignments
from ._service.supervisor import Supervisor
from ._storm.loading import load_config
from ._version import __version__

__all__ = [
    "Assignments",
    "AuditReport",
    "BerthError",
    "Capabilities",
    "CapacityError",
    "Check",
    "CleanupError",
    "ConfigError",
    "EngineError",
    "ExecResult",
    "ExitRecord",
    "HostFacts",
    "Identity",
    "IdentityError",
    "LaunchError",
    "Launched",
    "Mount",
    "Node",
    "NodeConfig",
    "Plan",
    "PolicyError",
    "RecoveryReport",
    "Rejection",
    "Resources",
    "Runtime",
    "RuntimePlugin",
    "Security",
    "SpecError",
    "StateError",
    "Supervisor",
    "SupervisorLocked",
    "WaitTimeout",
    "WorkerDescription",
    "WorkerHandle",
    "WorkerNotFound",
    "WorkerNotRunning",
    "WorkerSpec",
    "WorkerState",
    "WorkerStatus",
    "__version__",
    "audit_all",
    "audit_worker",
    "build_plan",
    "docker_run_argv",
    "docker_run_line",
    "engine_create_body",
    "load_assignments",
    "load_config",
    "load_spec",
    "plan_for",
    "prepare_worker_dirs",
    "register_runtime",
    "remove_worker_dirs",
    "resolve_identity",
    "spec_from_mapping",
    "text_summary",
]
