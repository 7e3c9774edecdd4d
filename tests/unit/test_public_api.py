"""The public API is ``berth.__all__``, pinned: adding or dropping a name is a decision, made here."""

from __future__ import annotations

import inspect
import types

import berth

PUBLIC = {
    # node and supervisor
    "Node", "Launched", "WorkerHandle", "RecoveryReport", "Supervisor", "Assignments", "Rejection", "load_assignments",
    # request, config, plan and its renderers
    "WorkerSpec", "load_spec", "spec_from_mapping", "NodeConfig", "load_config", "HostFacts", "Identity",
    "resolve_identity", "Plan", "Mount", "Resources", "Security", "build_plan", "plan_for",
    "docker_run_argv", "docker_run_line", "engine_create_body", "text_summary",
    "prepare_worker_dirs", "remove_worker_dirs",
    # what runtimes report
    "Runtime", "RuntimePlugin", "register_runtime",
    "Capabilities", "ExecResult", "ExitRecord", "WorkerDescription", "WorkerState", "WorkerStatus",
    # audit
    "AuditReport", "Check", "audit_all", "audit_worker",
    # errors
    "BerthError", "CapacityError", "CleanupError", "ConfigError", "EngineError", "IdentityError", "LaunchError",
    "PolicyError", "SpecError", "StateError", "SupervisorLocked", "WaitTimeout", "WorkerNotFound", "WorkerNotRunning",
    "__version__",
}


def test_all_is_the_pinned_public_api() -> None:
    assert set(berth.__all__) == PUBLIC
    assert len(berth.__all__) == len(PUBLIC)  # no name twice


def test_every_public_name_exists_and_nothing_else_is_public() -> None:
    for name in berth.__all__:
        assert getattr(berth, name, None) is not None, name
    extra = {n for n, v in vars(berth).items()
             if not n.startswith("_") and not isinstance(v, types.ModuleType) and n not in PUBLIC}
    assert not extra, f"public in berth but not in __all__: {sorted(extra)}"


def test_every_error_a_public_call_raises_on_purpose_is_exported() -> None:
    """Each ``BerthError`` subclass of the one exceptions module can be caught by its public name."""
    from berth import _exceptions

    errors = {n for n, v in vars(_exceptions).items() if inspect.isclass(v) and issubclass(v, berth.BerthError)}
    # the cluster has no Python API; berth-shim's is an EngineError; the worker-launcher's callers get exit codes;
    # an illegal transition of the supervisor's phase table is a bug, raised only where tests make it loud
    internal = {"ClusterError", "ShimError", "LauncherRefused", "IllegalTransition"}
    assert errors - internal <= set(berth.__all__)


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert berth.__version__ == version("berth")
