"""What the cluster reads of a supervisor (issue 19), on the in-memory runtime: its applied
version means that the new workers run and the removed ones are gone."""

from __future__ import annotations

import os

import pytest

from ._supfake import Harness, doc, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns worker directories to made-up uids")


def test_the_applied_version_waits_for_replacements_and_removals(h: Harness) -> None:
    h.sup.set_assignments(doc(spec("w1", 6700), spec("w2", 6701)), version="v1")
    h.running("w1", "w2")
    h.watch.until(lambda: h.sup.applied_version() == "v1", "v1 applied")
    old = h.containers()
    held = {w: h.fake.hold_stops(w) for w in ("w1", "w2")}
    try:
        h.sup.set_assignments(doc(spec("w1", 6700, env={"GENERATION": "2"})), version="v2")
        h.watch.until(lambda: h.watch.state("w1") == "stopping" and h.watch.state("w2") == "stopping",
                      "the replacement of w1 and the removal of w2 to begin")
        assert h.sup.applied_version() is None
        held["w1"].set()
        h.watch.until(lambda: h.containers().get("w1") not in (None, old["w1"]), "w1's replacement to run")
        assert h.sup.applied_version() is None, "applied while w2 was still being stopped"
    finally:
        for gate in held.values():
            gate.set()
    h.watch.until(lambda: h.sup.applied_version() == "v2", "v2 applied")
    assert set(h.containers()) == {"w1"}
