"""The coordinator's state machine and its count of dead nodes, driven by events alone."""

from __future__ import annotations

import pytest

from berth._cluster.agentstate import Connected, Disconnected, Stop, Tick
from berth._cluster.coordstate import (
    TRANSITIONS,
    Changed,
    CoDo,
    CoEvent,
    CoordinatorMachine,
    CoordinatorPhase,
    CoordinatorState,
    Liveness,
    LockAcquired,
    PassDone,
    PassFailed,
)

C = CoordinatorPhase


def active(dead_after_s: float = 30.0) -> CoordinatorMachine:
    machine = CoordinatorMachine(Liveness(dead_after_s))
    machine.handle(LockAcquired(5), 0.0)
    return machine


def test_a_standby_makes_no_pass_until_it_holds_the_lock() -> None:
    machine = CoordinatorMachine(Liveness(30.0))
    assert machine.state.phase is C.STANDBY
    assert machine.handle(Changed(), 1.0) == []
    assert machine.handle(Tick(), 1.0) == []
    assert machine.handle(Disconnected(1.0), 1.0) == []
    assert (machine.state.phase, machine.state.connected) == (C.STANDBY, False)
    assert machine.handle(Connected(4), 2.0) == []  # the lock's own wait goes on
    assert (machine.state.phase, machine.state.connected) == (C.STANDBY, True)
    assert machine.handle(LockAcquired(5), 3.0) == [CoDo.PASS]
    assert (machine.state.phase, machine.state.session) == (C.ACTIVE, 5)


def test_active_passes_on_every_change_and_after_a_failed_one() -> None:
    machine = active()
    assert machine.handle(Changed(), 1.0) == [CoDo.PASS]
    assert machine.handle(PassFailed(), 1.0) == []
    assert machine.handle(Changed(), 2.0) == [CoDo.PASS]
    assert machine.handle(PassDone(rolling=False), 2.0) == []
    assert machine.state.phase is C.ACTIVE


def test_a_rolling_replacement_watches_the_reports_until_it_is_done() -> None:
    machine = active()
    assert machine.handle(PassDone(rolling=True), 1.0) == [CoDo.WATCH_REPORTS]
    assert machine.state.phase is C.ROLLING
    assert machine.handle(Changed(), 2.0) == [CoDo.PASS]
    assert machine.handle(PassDone(rolling=True), 2.0) == [CoDo.WATCH_REPORTS]  # a node may have come
    assert machine.handle(PassDone(rolling=False), 3.0) == [CoDo.UNWATCH_REPORTS]
    assert str(machine.state.phase) == "active"
    assert machine.handle(PassDone(rolling=False), 4.0) == []


def test_a_cut_the_session_outlives_keeps_the_lock() -> None:
    machine = active()
    machine.handle(PassDone(rolling=True), 1.0)
    assert machine.handle(Disconnected(2.0), 2.0) == []
    assert (machine.state.phase, machine.state.connected) == (C.OFFLINE, False)
    assert machine.handle(Changed(), 2.5) == []  # its writes would fail
    assert machine.handle(PassDone(rolling=False), 2.5) == []  # a pass that ended during the cut
    assert machine.state.phase is C.OFFLINE
    assert machine.handle(Connected(5), 3.0) == [CoDo.PASS]
    assert (machine.state.phase, machine.state.connected) == (C.ACTIVE, True)


def test_a_new_session_loses_the_lock() -> None:
    machine = active()
    machine.handle(PassDone(rolling=True), 1.0)
    machine.handle(Disconnected(2.0), 2.0)
    assert machine.handle(Connected(6), 20.0) == [CoDo.UNWATCH_REPORTS, CoDo.WAIT_FOR_LOCK]
    assert (machine.state.phase, machine.state.session, machine.state.connected) == (C.STANDBY, None, True)
    assert machine.handle(LockAcquired(6), 25.0) == [CoDo.PASS]
    assert (machine.state.phase, machine.state.session) == (C.ACTIVE, 6)


def test_a_new_session_seen_without_the_cut_loses_the_lock_too() -> None:
    machine = active()
    assert machine.handle(Connected(5), 1.0) == []
    assert machine.handle(Connected(6), 2.0) == [CoDo.UNWATCH_REPORTS, CoDo.WAIT_FOR_LOCK]
    assert machine.state.phase is C.STANDBY


def test_a_node_gone_for_dead_after_makes_one_pass() -> None:
    machine = active(dead_after_s=30.0)
    liveness = machine.liveness
    assert liveness.see("n1", live=False, now=10.0) is False
    assert liveness.see("n2", live=True, now=10.0) is False
    assert machine.due(10.0) == 40.0
    assert machine.handle(Tick(), 39.0) == []
    assert liveness.see("n1", live=False, now=39.0) is False  # counts from the first look
    assert machine.handle(Tick(), 40.0) == [CoDo.PASS]
    assert liveness.see("n1", live=False, now=40.0) is True
    liveness.dealt_with(["n1"])
    assert machine.handle(Tick(), 41.0) == []
    assert machine.due(41.0) is None
    assert liveness.see("n1", live=True, now=50.0) is False  # back: forgotten
    assert (liveness.gone_since, liveness.handled) == ({}, set())


def test_the_earliest_death_is_due_first() -> None:
    liveness = Liveness(30.0)
    liveness.see("a", live=False, now=10.0)
    liveness.see("b", live=False, now=5.0)
    assert liveness.next_death(6.0) == 35.0
    assert liveness.next_death(36.0) == 40.0
    assert liveness.someone_died(36.0) is True
    machine = CoordinatorMachine(liveness)
    assert machine.due(6.0) is None  # a standby times nothing
    assert machine.handle(Tick(), 36.0) == []


def test_stopped_ignores_everything() -> None:
    machine = active()
    assert machine.handle(Stop(), 1.0) == []
    assert machine.handle(Changed(), 2.0) == []
    assert machine.handle(LockAcquired(6), 2.0) == []
    assert machine.state.phase is C.STOPPED


EVENTS: list[CoEvent] = [LockAcquired(9), Connected(5), Connected(9), Disconnected(1.0), Changed(),
                         PassDone(rolling=True), PassDone(rolling=False), PassFailed(), Tick(), Stop()]


@pytest.mark.parametrize("phase", list(C))
@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_every_event_in_every_phase_moves_by_the_table(phase: CoordinatorPhase, event: CoEvent) -> None:
    liveness = Liveness(30.0)
    liveness.see("n1", live=False, now=0.0)
    machine = CoordinatorMachine(liveness)
    machine.state = CoordinatorState(phase=phase, session=5, connected=phase is not C.OFFLINE)
    machine.handle(event, 100.0)
    assert machine.state.phase is phase or machine.state.phase in TRANSITIONS[phase]


def test_the_table_covers_every_phase_and_every_phase_can_stop() -> None:
    assert set(TRANSITIONS) == set(C)
    assert all(C.STOPPED in TRANSITIONS[phase] for phase in C if phase is not C.STOPPED)
    assert TRANSITIONS[C.STANDBY] == {C.ACTIVE, C.STOPPED}  # only the lock makes it active
