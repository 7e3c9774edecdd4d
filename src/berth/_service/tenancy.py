"""A tenant's part of the desired state: what a tenant's token may assign, and how its ``PUT``
joins the others' assignments.

A tenant (``[[api.tenants]]``) replaces only its own workers, and only with entries of its users
and topologies: one that names another user or topology, or another tenant's worker id, port or
topology, refuses the whole request (nothing applied). A refusal never names the other tenant's
worker or user: not even their existence is a tenant's to learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._core.serviceconfig import TenantToken
from .._core.spec import WorkerSpec
from .assignments import Assignments, Rejection, parse_document
from .slot import Entry


@dataclass(frozen=True)
class Refusal:
    """An entry (``index``; None: the request itself) the tenant may not make, and why."""

    index: int | None
    field: str
    reason: str


@dataclass(frozen=True)
class PutOutcome:
    """What a ``PUT`` of the desired state came to: refused whole (``refused``), or applied with
    the tenant's (or, for the operator, every) worker ``accepted`` and some entries ``rejected``."""

    assignments: Assignments
    refused: list[Refusal] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def source_of(tenant: TenantToken | None) -> str:
    return "api" if tenant is None else f"api:{tenant.name}"


def owns(tenant: TenantToken | None, spec: WorkerSpec) -> bool:
    """The operator (``tenant`` None) owns every worker; a tenant, those of its users and topologies."""
    return tenant is None or tenant.allows(spec.user, spec.topology_id)


def tenant_document(tenant: TenantToken | None, entries: Sequence[Any], version: str | None,
                    desired: Mapping[str, Entry]) -> PutOutcome:
    """The whole desired state a ``PUT`` of ``entries`` asks for: the operator's entries alone, or
    a tenant's with every other worker's current entry (from its own source) kept."""
    if tenant is None:
        return PutOutcome(parse_document({"workers": list(entries)}, source_of(None)))
    others = {w: e for w, e in desired.items() if not owns(tenant, e.spec)}
    refused = refusals(tenant, entries, {w: e.spec for w, e in others.items()})
    if version is not None:  # the node's assignment version is the operator's to set
        refused.append(Refusal(None, "version", "only the operator's token sets the version"))
    parsed = parse_document({"workers": []}, "api")
    if refused:
        return PutOutcome(parsed, refused)
    for e in others.values():
        parsed.add(e.spec, e.source, None)
    return PutOutcome(parse_document({"workers": list(entries)}, source_of(tenant), into=parsed))


def refusals(tenant: TenantToken, entries: Sequence[Any], others: Mapping[str, WorkerSpec]) -> list[Refusal]:
    """Each entry a tenant may not make: another user, another topology, another's worker id,
    port or topology. Said without naming the other's worker or user (the rejection of a clash
    would: not even their existence is a tenant's to learn)."""
    ports = {s.port for s in others.values()}
    topologies = {s.topology_id: s.user for s in others.values()}
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            continue  # malformed: parse_document rejects it with its reason
        user, topo, wid = e.get("user"), e.get("topology_id"), e.get("worker_id")
        if str(user) not in tenant.users:
            out.append(Refusal(i, "user", f"tenant {tenant.name!r} may not launch as user {user!r}"))
        if not tenant.allows_topology(str(topo)):
            out.append(Refusal(i, "topology_id", f"tenant {tenant.name!r} may not launch in topology {topo!r}"))
        elif topologies.get(str(topo), user) != user:
            out.append(Refusal(i, "topology_id", f"topology {topo!r} belongs to another tenant"))
        if isinstance(wid, str) and wid in others:  # not a string: parse_document says why
            out.append(Refusal(i, "worker_id", f"worker id {wid!r} belongs to another tenant"))
        if isinstance(e.get("port"), int) and e.get("port") in ports:
            out.append(Refusal(i, "port", f"port {e.get('port')!r} is taken by another tenant's worker"))
    return out
