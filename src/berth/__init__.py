"""berth: launch the workers of a multi-tenant cluster node in hardened containers.

The public API is what this module exports; everything in ``berth._*`` is private.
"""

from ._audit import AuditReport, Check, audit_all, audit_worker
from ._config import NodeConfig, load_config
from ._exceptions import (
    BerthError,
    ConfigError,
    EngineError,
    IdentityError,
    LaunchError,
    PolicyError,
    SpecError,
    WorkerNotFound,
)
from ._host import HostFacts
from ._identity import Identity, resolve_identity
from ._plan import Mount, Plan, Resources, Security, build_plan, plan_for
from ._render import docker_run_argv, docker_run_line, engine_create_body, text_summary
from ._spec import WorkerSpec, load_spec, spec_from_mapping

__version__ = "0.1.0"

__all__ = [
    "AuditReport",
    "BerthError",
    "Check",
    "ConfigError",
    "EngineError",
    "HostFacts",
    "Identity",
    "IdentityError",
    "LaunchError",
    "Mount",
    "NodeConfig",
    "Plan",
    "PolicyError",
    "Resources",
    "Security",
    "SpecError",
    "WorkerNotFound",
    "WorkerSpec",
    "audit_all",
    "audit_worker",
    "build_plan",
    "docker_run_argv",
    "docker_run_line",
    "engine_create_body",
    "load_config",
    "load_spec",
    "plan_for",
    "resolve_identity",
    "spec_from_mapping",
    "text_summary",
]
