"""The agent's state machine driven by events alone: exact phases, data and actions for each."""

from __future__ import annotations

import pytest

from berth._cluster.agentstate import (
    TRANSITIONS,
    ActionFailed,
    AgentMachine,
    AgentPhase,
    Connected,
    Disconnected,
    Do,
    DocumentApplied,
    DocumentDelivered,
    EnrolmentChanged,
    IllegalTransition,
    Limits,
    ReadPostponed,
    Refused,
    Registered,
    RegisterPostponed,
    RegistrationChanged,
    Started,
    Stop,
    SupervisorProgress,
    Tick,
)

P = AgentPhase


def registered(limits: Limits | None = None, version: str | None = "v1") -> AgentMachine:
    """Started at t=0 from ``version``, connected in session 7 and registered in it."""
    machine = AgentMachine(limits)
    machine.handle(Started(since=0.0, version=version), 0.0)
    machine.handle(Connected(7), 1.0)
    machine.handle(Registered(7), 1.0)
    return machine


def test_start_connect_register_apply_and_run() -> None:
    machine = AgentMachine()
    assert machine.state.phase is P.STARTING
    assert machine.handle(Started(since=5.0, version="v1"), 5.0) == [Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.offline_since, machine.state.applied) == (P.OFFLINE, 5.0, "v1")
    assert machine.handle(Connected(7), 6.0) == [Do.REGISTER, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.session, machine.state.offline_since) == (P.REGISTERING, 7, None)
    assert not machine.state.registered
    assert machine.handle(Registered(7), 6.0) == [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.lease) == (P.APPLYING, 7)
    assert machine.state.registered
    assert machine.handle(SupervisorProgress("v1"), 7.0) == [Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.supervised) == (P.STEADY, "v1")
    assert machine.handle(Registered(7), 8.0) == []  # a check of a registration it holds
    assert machine.state.phase is P.STEADY


def test_a_new_document_is_applied_then_run() -> None:
    machine = registered()
    machine.handle(SupervisorProgress("v1"), 2.0)
    assert machine.handle(DocumentDelivered(), 3.0) == [Do.APPLY_DELIVERED]
    assert machine.handle(DocumentApplied("v2"), 3.0) == [Do.REPORT, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.applied) == (P.APPLYING, "v2")
    assert machine.handle(SupervisorProgress("v1"), 4.0) == []  # still the old workers
    assert machine.state.phase is P.APPLYING
    assert machine.handle(SupervisorProgress("v2"), 5.0) == [Do.WRITE_STATUS]
    assert str(machine.state.phase) == "steady"


def test_without_a_document_it_registers_into_applying_and_stays() -> None:
    machine = registered(version=None)
    assert (machine.state.phase, machine.state.applied) == (P.APPLYING, None)
    assert machine.handle(SupervisorProgress(None), 2.0) == []
    assert machine.state.phase is P.APPLYING


def test_a_document_delivered_while_not_registered_waits_for_the_read_of_the_registration() -> None:
    machine = AgentMachine()
    machine.handle(Started(since=0.0, version=None), 0.0)
    machine.handle(Connected(7), 1.0)
    assert machine.handle(DocumentDelivered(), 1.0) == []
    assert machine.handle(Registered(7), 1.0) == [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]


def test_a_cut_the_session_outlives_keeps_the_registration() -> None:
    machine = registered()
    machine.handle(SupervisorProgress("v1"), 2.0)
    assert machine.handle(Disconnected(since=10.0), 10.5) == [Do.WRITE_STATUS]
    st = machine.state
    assert (st.phase, st.session, st.lease, st.offline_since, st.registered) == (P.OFFLINE, None, 7, 10.0, False)
    assert machine.handle(Disconnected(since=11.0), 11.0) == []  # already known
    assert machine.state.offline_since == 10.0
    assert machine.handle(Connected(7), 12.0) == [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]
    st = machine.state
    assert (st.phase, st.offline_since, st.registered) == (P.STEADY, None, True)
    assert machine.handle(Connected(7), 12.5) == []


def test_a_new_session_registers_again() -> None:
    machine = registered()
    machine.handle(Disconnected(since=10.0), 10.0)
    assert machine.handle(Connected(8), 30.0) == [Do.REGISTER, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.session, machine.state.lease) == (P.REGISTERING, 8, None)
    assert machine.handle(Registered(8), 30.0) == [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.lease) == (P.APPLYING, 8)


def test_offline_past_dead_after_is_presumed_dead_once() -> None:
    machine = registered(Limits(dead_after=30.0))
    machine.handle(Disconnected(since=10.0), 10.0)
    assert machine.due() == 40.0
    assert machine.handle(Tick(), 39.9) == []
    assert machine.state.phase is P.OFFLINE
    assert machine.handle(Tick(), 40.0) == [Do.WARN_PRESUMED_DEAD, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.presumed_dead) == (P.PRESUMED_DEAD, True)
    assert machine.due() is None  # fencing off: nothing more is timed
    assert machine.handle(Tick(), 100.0) == []
    assert machine.handle(Connected(7), 101.0) == [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.presumed_dead) == (P.APPLYING, False)


def test_offline_past_fence_after_stops_the_workers_until_a_document_is_read() -> None:
    machine = registered(Limits(fence_after=20.0, dead_after=30.0))
    machine.handle(SupervisorProgress("v1"), 2.0)
    machine.handle(Disconnected(since=10.0), 10.0)
    assert machine.due() == 30.0
    assert machine.handle(Tick(), 30.0) == [Do.STOP_WORKERS, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.fenced) == (P.FENCED, True)
    assert machine.due() == 40.0  # dead_after still counts, for the status
    assert machine.handle(Tick(), 40.0) == [Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.presumed_dead) == (P.FENCED, True)
    assert machine.due() is None
    # a new session: registering, still fenced
    assert machine.handle(Connected(8), 50.0) == [Do.REGISTER, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.session) == (P.FENCED, 8)
    assert machine.handle(Registered(8), 50.0) == [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.registered) == (P.FENCED, True)
    assert machine.handle(DocumentDelivered(), 51.0) == [Do.READ_DOCUMENT]  # fenced: only its own read lifts it
    assert machine.handle(SupervisorProgress("v1"), 51.0) == []
    assert machine.state.phase is P.FENCED
    assert machine.handle(DocumentApplied("v1"), 52.0) == [Do.REPORT, Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.applied) == (P.APPLYING, "v1")


def test_fenced_and_cut_again_stays_fenced() -> None:
    machine = registered(Limits(fence_after=5.0))
    machine.handle(Disconnected(since=10.0), 10.0)
    machine.handle(Tick(), 15.0)
    machine.handle(Connected(8), 20.0)
    assert machine.handle(Disconnected(since=21.0), 21.0) == [Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.offline_since) == (P.FENCED, 21.0)
    assert machine.due() is None  # already fenced: not again
    assert machine.handle(Tick(), 100.0) == []


def test_refused_waits_and_retries_when_due() -> None:
    machine = AgentMachine()
    machine.handle(Started(since=0.0, version=None), 0.0)
    machine.handle(Connected(7), 1.0)
    assert machine.handle(Refused("node 'n1' is not enrolled", retry_at=11.0), 1.0) == [Do.WRITE_STATUS]
    st = machine.state
    assert (st.phase, st.problem, st.register_at, st.lease) == (P.WAITING, "node 'n1' is not enrolled", 11.0, None)
    assert machine.due() == 11.0
    assert machine.handle(Tick(), 10.9) == []
    assert machine.handle(Tick(), 11.0) == [Do.REGISTER]
    assert (machine.state.phase, machine.state.register_at) == (P.REGISTERING, None)
    assert machine.handle(Registered(7), 11.0) == [Do.READ_DOCUMENT, Do.REPORT, Do.WRITE_STATUS]
    assert machine.state.problem is None


def test_a_watch_ends_the_wait_at_once() -> None:
    machine = AgentMachine()
    machine.handle(Started(since=0.0, version=None), 0.0)
    machine.handle(Connected(7), 1.0)
    machine.handle(Refused("registered by pid 4 on h", retry_at=11.0), 1.0)
    assert machine.handle(RegistrationChanged(owner=99), 2.0) == []  # still the other agent's
    assert machine.handle(RegistrationChanged(owner=None), 3.0) == [Do.REGISTER]
    assert (machine.state.phase, machine.state.register_at) == (P.REGISTERING, None)
    assert machine.handle(EnrolmentChanged(), 3.0) == []  # an attempt is under way
    machine.handle(Refused("node 'n1' is not enrolled", retry_at=13.0), 3.0)
    assert machine.handle(EnrolmentChanged(), 4.0) == [Do.REGISTER]
    assert machine.state.phase is P.REGISTERING


def test_a_registration_gone_under_a_registered_agent_is_made_again() -> None:
    machine = registered()
    assert machine.handle(RegistrationChanged(owner=7), 2.0) == []
    assert machine.handle(EnrolmentChanged(), 2.0) == []
    assert machine.handle(RegistrationChanged(owner=None), 3.0) == [Do.REGISTER]
    assert machine.handle(RegistrationChanged(owner=12), 3.0) == [Do.REGISTER]
    assert machine.handle(Refused("registered by pid 4 on h", retry_at=13.0), 3.0) == [Do.WRITE_STATUS]
    assert (machine.state.phase, machine.state.lease, machine.state.registered) == (P.WAITING, None, False)


def test_watches_are_ignored_offline() -> None:
    machine = registered()
    machine.handle(Disconnected(since=10.0), 10.0)
    assert machine.handle(RegistrationChanged(owner=None), 11.0) == []
    assert machine.handle(DocumentDelivered(), 11.0) == []
    assert machine.state.phase is P.OFFLINE


def test_postponed_registration_and_read_are_retried_when_due() -> None:
    machine = AgentMachine()
    machine.handle(Started(since=0.0, version=None), 0.0)
    machine.handle(Connected(7), 1.0)
    assert machine.handle(RegisterPostponed(retry_at=2.0), 1.0) == []
    assert (machine.state.phase, machine.due()) == (P.REGISTERING, 2.0)
    assert machine.handle(Tick(), 2.0) == [Do.REGISTER]
    machine.handle(Registered(7), 2.0)
    assert machine.handle(ReadPostponed(retry_at=3.0), 2.0) == []
    assert (machine.state.phase, machine.state.read_at, machine.due()) == (P.APPLYING, 3.0, 3.0)
    assert machine.handle(Tick(), 3.0) == [Do.READ_DOCUMENT]
    assert (machine.state.read_at, machine.due()) == (None, None)


def test_a_cut_drops_the_timed_retries() -> None:
    machine = AgentMachine()
    machine.handle(Started(since=0.0, version=None), 0.0)
    machine.handle(Connected(7), 1.0)
    machine.handle(RegisterPostponed(retry_at=2.0), 1.0)
    machine.handle(Disconnected(since=1.5), 1.5)
    assert (machine.state.register_at, machine.due()) == (None, None)
    assert machine.handle(Tick(), 5.0) == []


def test_a_registration_that_raised_is_tried_again_not_left_hanging() -> None:
    machine = AgentMachine()
    machine.handle(Started(since=0.0, version=None), 0.0)
    machine.handle(Connected(7), 1.0)
    assert (machine.state.phase, machine.due()) == (P.REGISTERING, None)  # waits for the attempt's outcome
    assert machine.handle(ActionFailed(Do.REGISTER, retry_at=2.0), 1.0) == []
    assert (machine.state.phase, machine.state.register_at, machine.due()) == (P.REGISTERING, 2.0, 2.0)
    assert machine.handle(Tick(), 2.0) == [Do.REGISTER]


def test_a_check_of_the_registration_that_raised_registers_again() -> None:
    machine = registered()
    machine.handle(ActionFailed(Do.REGISTER, retry_at=5.0), 2.0)
    st = machine.state
    assert (st.phase, st.lease, st.register_at, st.registered) == (P.REGISTERING, None, 5.0, False)


@pytest.mark.parametrize("action", [Do.READ_DOCUMENT, Do.APPLY_DELIVERED])
def test_a_read_that_raised_is_tried_again(action: Do) -> None:
    machine = registered()
    assert machine.handle(ActionFailed(action, retry_at=3.0), 2.0) == []
    assert (machine.state.phase, machine.state.read_at, machine.due()) == (P.APPLYING, 3.0, 3.0)
    assert machine.handle(Tick(), 3.0) == [Do.READ_DOCUMENT]


def test_other_actions_that_raised_change_nothing() -> None:
    machine = registered()
    before = machine.state
    assert machine.handle(ActionFailed(Do.WRITE_STATUS, retry_at=3.0), 2.0) == []
    assert machine.state == before


def test_stopped_ignores_everything() -> None:
    machine = registered()
    assert machine.handle(Stop(), 2.0) == []
    assert machine.state.phase is P.STOPPED
    assert machine.handle(Connected(8), 3.0) == []
    assert machine.handle(Tick(), 3.0) == []
    assert machine.state.phase is P.STOPPED


def test_a_move_the_table_forbids_is_a_defect() -> None:
    machine = AgentMachine()
    with pytest.raises(IllegalTransition, match="starting -> applying"):
        machine.handle(Registered(7), 0.0)
    assert machine.state.phase is P.STARTING


def test_the_table_covers_every_phase_and_every_phase_can_stop() -> None:
    assert set(TRANSITIONS) == set(P)
    assert all(P.STOPPED in TRANSITIONS[phase] for phase in P if phase is not P.STOPPED)
    assert TRANSITIONS[P.STOPPED] == frozenset()
    assert TRANSITIONS[P.FENCED] == {P.APPLYING, P.STOPPED}  # only a document read lifts a fence
