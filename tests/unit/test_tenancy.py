"""A tenant's ``PUT`` of the desired state, in the service layer (``tenancy``, ``Supervisor.put``),
without HTTP: what it replaces, what it keeps of the others, and what it refuses whole."""

from __future__ import annotations

from typing import Any

from berth._core.serviceconfig import TenantToken
from berth._core.spec import WorkerSpec
from berth._service.slot import Entry
from berth._service.tenancy import Refusal, owns, source_of, tenant_document

from ._supfake import Harness, spec

TA = TenantToken(name="ta", token="a" * 16, users=("alice",), topologies=("ta-*",))


def entry(s: WorkerSpec) -> dict[str, Any]:
    return s.model_dump(mode="json", exclude_defaults=True)


def test_who_owns_what() -> None:
    assert owns(None, spec("w1", 6700, topology="tb-1"))  # the operator owns every worker
    assert owns(TA, spec("w1", 6700, topology="ta-1"))
    assert not owns(TA, spec("w1", 6700, topology="tb-1"))
    assert not owns(TA, spec("w1", 6700, user="bob", topology="ta-1"))
    assert (source_of(None), source_of(TA)) == ("api", "api:ta")


def test_a_tenants_put_replaces_its_own_workers_and_keeps_the_others() -> None:
    theirs, old = spec("w1", 6700, topology="tb-1"), spec("w2", 6701, topology="ta-1")
    desired = {"w1": Entry(theirs, "file:a.yaml"), "w2": Entry(old, "api:ta")}
    out = tenant_document(TA, [entry(spec("w3", 6702, topology="ta-2"))], None, desired)
    assert out.refused == []
    assert sorted(out.assignments.specs) == ["w1", "w3"]  # w2, the tenant's, is replaced
    assert out.assignments.specs["w1"] == theirs and out.assignments.sources["w1"] == "file:a.yaml"
    assert out.assignments.sources["w3"] == "api:ta"


def test_the_operators_put_replaces_everything() -> None:
    desired = {"w1": Entry(spec("w1", 6700, topology="tb-1"), "file:a.yaml")}
    out = tenant_document(None, [entry(spec("w3", 6702))], "v7", desired)
    assert (out.refused, sorted(out.assignments.specs), out.assignments.sources["w3"]) == ([], ["w3"], "api")


def test_a_tenants_put_is_refused_whole_without_naming_the_other_tenants_workers() -> None:
    desired = {"w1": Entry(spec("w1", 6700, user="bob", topology="ta-9"), "api:tb")}
    entries = [entry(spec("w1", 6701, topology="ta-1")),  # another's worker id
               entry(spec("w4", 6700, topology="ta-2")),  # another's port
               entry(spec("w5", 6705, topology="ta-9")),  # another's topology (bob's)
               entry(spec("w6", 6706, user="bob", topology="ta-1")),  # another user
               entry(spec("w7", 6707, topology="tb-1"))]  # a topology not the tenant's
    out = tenant_document(TA, entries, "v2", desired)
    assert out.refused == [
        Refusal(0, "worker_id", "worker id 'w1' belongs to another tenant"),
        Refusal(1, "port", "port 6700 is taken by another tenant's worker"),
        Refusal(2, "topology_id", "topology 'ta-9' belongs to another tenant"),
        Refusal(3, "user", "tenant 'ta' may not launch as user 'bob'"),
        Refusal(4, "topology_id", "tenant 'ta' may not launch in topology 'tb-1'"),
        Refusal(None, "version", "only the operator's token sets the version"),
    ]
    assert out.assignments.specs == {}  # nothing of it is applied
    assert not any("bob" in r.reason for r in out.refused if r.index != 3)


def test_the_supervisor_applies_a_tenants_put_and_refuses_one_whole(h: Harness) -> None:
    h.sup.put([entry(spec("w1", 6700, topology="tb-1"))], "v1")
    h.running("w1")
    done = h.sup.put([entry(spec("w2", 6701, topology="ta-1"))], None, TA)
    assert (done.refused, done.accepted) == ([], ["w2"])
    h.running("w1", "w2")
    assert h.sup.applied_version() == "v1"  # a tenant never sets the version
    before = h.containers()
    bad = h.sup.put([entry(spec("w3", 6702, topology="ta-1")), entry(spec("w1", 6703, topology="ta-1"))], None, TA)
    assert [(r.index, r.field) for r in bad.refused] == [(1, "worker_id")]
    h.watch.settle()
    assert sorted(h.sup.desired()) == ["w1", "w2"] and h.containers() == before  # nothing applied
