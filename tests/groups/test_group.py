"""The DecisionGroup state machine, driven with explicit ``now`` values (a fake clock)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pytest

from groups import (
    DECISIONS,
    GROUP_DECISIONS,
    MAX_CHANNEL_LENGTH,
    NOBODY,
    PERIOD_END,
    PERIOD_START,
    RESERVED_CHANNELS,
    RESULT,
    STATE,
    ConfigError,
    DecisionGroup,
    Event,
    GameFault,
    GroupState,
    InvalidDecision,
    InvalidState,
    NotAMember,
    NotRunning,
    Phase,
    RefusedAction,
    Tick,
    Timing,
    UnknownChannel,
    describe_fault,
    require_number,
)

MEMBERS = ("a", "b", "c")
ORDERS = list(itertools.permutations(MEMBERS))


class Recording(DecisionGroup):
    """A game that records its hooks and stores decisions as numbers in [0, 10]."""

    name = "recording"

    def __init__(self, members: Sequence[str], **kwargs: Any) -> None:
        self.ready_calls: list[dict[str, Any]] = []
        self.disconnects: list[str] = []
        super().__init__(members, **kwargs)

    def initial_decision(self, participant: str) -> Any:
        return f"init-{participant}"

    def validate_decision(self, participant: str, decision: Any) -> Any:
        return require_number(decision, 0, 10)

    def when_all_players_ready(self) -> None:
        self.ready_calls.append(self.group_decisions)

    def when_player_disconnects(self, participant: str) -> None:
        self.disconnects.append(participant)
        self.send("left", participant)


class Chat(DecisionGroup):
    """A game with a ``chat`` channel whose handler broadcasts, and tells the sender it did."""

    name = "chat"
    channels: ClassVar[frozenset[str]] = frozenset({"chat"})

    def on_chat(self, participant: str, payload: Any) -> None:
        if payload == "to a stranger":
            self.send("chat", payload, to=["zed"])
        self.send("chat", {"from": participant, "text": payload})
        self.send("receipt", "ok", to=[participant])


class Mute(DecisionGroup):
    """A game that declares a channel but forgot its handler."""

    channels: ClassVar[frozenset[str]] = frozenset({"shout"})


def make(
    game: type[DecisionGroup] = Recording,
    members: Sequence[str] = MEMBERS,
    period_length: float | None = None,
) -> Any:
    """A fresh group of ``game`` with the given members and period length."""
    return game(members, timing=Timing(period_length=period_length))


def connect_all(group: DecisionGroup, now: float = 1.0) -> list[Event]:
    """Connect every member at ``now``; return all the events."""
    events: list[Event] = []
    for member in group.members:
        events += group.connect(member, now)
    return events


def states(events: Sequence[Event]) -> list[Any]:
    """The payloads of the ``state`` events."""
    return [e.payload for e in events if e.channel == STATE]


def channels_of(events: Sequence[Event]) -> list[str]:
    """The channel of each event, in order."""
    return [e.channel for e in events]


# ---------------------------------------------------------------------- starting


@pytest.mark.parametrize("order", ORDERS, ids="".join)
def test_period_starts_once_whatever_the_connect_order(order: tuple[str, ...]) -> None:
    """The period starts exactly once, on the connect of the last missing member."""
    group = make()
    outputs = [group.connect(member, float(i)) for i, member in enumerate(order, start=1)]
    assert [states(out) for out in outputs] == [[], [], [PERIOD_START]]
    assert group.phase is Phase.RUNNING
    assert group.state.started_at == 3.0
    assert len(group.ready_calls) == 1


@pytest.mark.parametrize("order", ORDERS, ids="".join)
def test_period_waits_for_a_member_who_left_before_the_start(order: tuple[str, ...]) -> None:
    """A member who disconnects before the start must come back before it happens."""
    first, second, third = order
    group = make()
    events = group.connect(first, 1.0)
    events += group.connect(first, 1.5)  # a second tab: still not everyone
    events += group.connect(second, 2.0)
    events += group.disconnect(first, 3.0)
    events += group.connect(third, 4.0)
    assert states(events) == []
    assert group.phase is Phase.WAITING
    last = group.connect(first, 5.0)
    assert states(last) == [PERIOD_START]
    assert group.state.started_at == 5.0
    assert len(group.ready_calls) == 1


@pytest.mark.parametrize("order", ORDERS, ids="".join)
def test_reconnects_after_the_start_never_restart_the_period(order: tuple[str, ...]) -> None:
    """Leaving and coming back once the period runs emits no second period_start."""
    group = make(period_length=60.0)
    for i, member in enumerate(order):
        group.connect(member, 10.0 + i)
    group.receive("a", DECISIONS, 7, 13.0)
    before = group.state.copy()
    events: list[Event] = []
    for i, member in enumerate(order):
        events += group.disconnect(member, 20.0 + i)
    for i, member in enumerate(reversed(order)):
        events += group.connect(member, 30.0 + i)
    assert states(events) == []
    assert GROUP_DECISIONS not in channels_of(events)
    assert group.state == before
    assert len(group.ready_calls) == 1


def test_a_connect_after_the_end_does_not_restart_the_period() -> None:
    """Once ended, a group stays ended whoever connects."""
    group = make()
    connect_all(group)
    group.end(2.0)
    group.disconnect("a", 3.0)
    assert group.connect("a", 4.0) == []
    assert group.phase is Phase.ENDED


def test_the_start_broadcasts_period_start_then_the_initial_decisions() -> None:
    """The starting connect returns period_start and every member's initial decision."""
    group = make()
    group.connect("a", 1.0)
    group.connect("b", 1.0)
    events = group.connect("c", 2.0)
    initial = {"a": "init-a", "b": "init-b", "c": "init-c"}
    assert events == [Event(STATE, PERIOD_START), Event(GROUP_DECISIONS, initial)]
    assert all(e.broadcast and e.participant is None for e in events)
    assert group.group_decisions == initial


def test_when_all_players_ready_runs_once_after_the_decisions_are_initialised() -> None:
    """The hook runs once and already sees the initial decisions."""
    group = make()
    connect_all(group)
    group.disconnect("b", 2.0)
    group.connect("b", 3.0)
    group.end(4.0)
    assert group.ready_calls == [{"a": "init-a", "b": "init-b", "c": "init-c"}]


def test_events_sent_by_the_ready_hook_follow_the_start_events() -> None:
    """A message sent from when_all_players_ready comes after period_start and group_decisions."""

    class Greeter(DecisionGroup):
        def when_all_players_ready(self) -> None:
            self.send("welcome", "hi")

    group = make(Greeter, members=("a",))
    assert channels_of(group.connect("a", 1.0)) == [STATE, GROUP_DECISIONS, "welcome"]


def test_start_forces_the_period_with_members_missing() -> None:
    """An experimenter's start begins the period with only some members connected."""
    group = make(period_length=30.0)
    group.connect("a", 1.0)
    events = group.start(5.0)
    assert events == [
        Event(STATE, PERIOD_START),
        Event(GROUP_DECISIONS, {"a": "init-a", "b": "init-b", "c": "init-c"}),
    ]
    assert group.phase is Phase.RUNNING
    assert group.state.started_at == 5.0
    assert group.state.ends_at == 35.0
    late = group.connect("b", 6.0) + group.connect("c", 7.0)
    assert states(late) == []
    assert len(group.ready_calls) == 1


def test_start_twice_raises_invalid_state() -> None:
    """A second start is refused and leaves the running period alone."""
    group = make()
    group.start(1.0)
    before = group.state.copy()
    with pytest.raises(InvalidState, match="running"):
        group.start(2.0)
    assert group.state == before


@pytest.mark.parametrize("setup", ["auto_started", "ended"])
def test_start_is_refused_unless_the_group_is_waiting(setup: str) -> None:
    """start raises InvalidState after the automatic start and after the end."""
    group = make()
    connect_all(group)
    if setup == "ended":
        group.end(2.0)
    with pytest.raises(InvalidState):
        group.start(3.0)
    assert len(group.ready_calls) == 1


# ---------------------------------------------------------------------- decisions


def test_each_decision_is_recorded_and_the_group_decisions_broadcast() -> None:
    """A decision returns the inbound event (sent to nobody) then the group's decisions."""
    group = make()
    connect_all(group)
    events = group.receive("b", DECISIONS, 4, 2.0)
    assert events == [
        Event(DECISIONS, 4.0, "b", NOBODY),
        Event(GROUP_DECISIONS, {"a": "init-a", "b": 4.0, "c": "init-c"}),
    ]
    assert not events[0].broadcast
    assert events[1].broadcast
    events = group.receive("a", DECISIONS, 9.5, 3.0)
    assert events[-1] == Event(GROUP_DECISIONS, {"a": 9.5, "b": 4.0, "c": "init-c"})
    events = group.receive("b", DECISIONS, 0, 4.0)
    assert events[-1] == Event(GROUP_DECISIONS, {"a": 9.5, "b": 0.0, "c": "init-c"})
    assert group.group_decisions == {"a": 9.5, "b": 0.0, "c": "init-c"}
    assert group.now == 4.0


def test_group_decisions_is_a_copy() -> None:
    """Mutating group_decisions or an event payload does not touch the group's state."""
    group = make()
    events = connect_all(group)
    events[-1].payload["a"] = "tampered"
    group.group_decisions["b"] = "tampered"
    assert group.group_decisions == {"a": "init-a", "b": "init-b", "c": "init-c"}


def running(group: DecisionGroup) -> DecisionGroup:
    """Connect everyone so the period runs."""
    connect_all(group)
    return group


def ended(group: DecisionGroup) -> DecisionGroup:
    """Run the period, then end it."""
    connect_all(group)
    group.end(2.0)
    return group


def waiting(group: DecisionGroup) -> DecisionGroup:
    """Connect only the first member."""
    group.connect(group.members[0], 1.0)
    return group


Setup = Callable[[DecisionGroup], DecisionGroup]
MESSAGE = ("a", DECISIONS, 1, 5.0)

REFUSALS = [
    pytest.param(waiting, Recording, "receive", MESSAGE, NotRunning, id="decision_before_start"),
    pytest.param(ended, Recording, "receive", MESSAGE, NotRunning, id="decision_after_end"),
    pytest.param(
        running, Recording, "receive", ("zed", DECISIONS, 1, 5.0), NotAMember, id="non_member"
    ),
    pytest.param(
        running, Recording, "receive", ("a", DECISIONS, 11, 5.0), InvalidDecision, id="invalid"
    ),
    pytest.param(
        running,
        Recording,
        "receive",
        ("a", "chat", "hi", 5.0),
        UnknownChannel,
        id="unknown_channel",
    ),
    pytest.param(
        running, Recording, "receive", ("a", STATE, PERIOD_END, 5.0), UnknownChannel, id="state"
    ),
    pytest.param(
        running, Mute, "receive", ("a", "shout", "hi", 5.0), UnknownChannel, id="no_handler"
    ),
    pytest.param(
        running, Chat, "receive", ("zed", "chat", "hi", 5.0), NotAMember, id="chat_by_non_member"
    ),
    pytest.param(
        running,
        Chat,
        "receive",
        ("a", "chat", "to a stranger", 5.0),
        NotAMember,
        id="chat_send_to_non_member",
    ),
    pytest.param(waiting, Recording, "connect", ("zed", 5.0), NotAMember, id="connect_non_member"),
    pytest.param(
        running, Recording, "disconnect", ("zed", 5.0), NotAMember, id="disconnect_non_member"
    ),
]


@pytest.mark.parametrize(("setup", "game", "method", "args", "error"), REFUSALS)
def test_a_refused_action_raises_and_changes_nothing(
    setup: Setup,
    game: type[DecisionGroup],
    method: str,
    args: tuple[Any, ...],
    error: type[RefusedAction],
) -> None:
    """Each refusal raises its RefusedAction; state, connections and outbox are unchanged."""
    group = setup(make(game))
    state_before = group.state.copy()
    connected_before = set(group.connected)
    with pytest.raises(error) as info:
        getattr(group, method)(*args)
    assert info.value.code == error.code
    assert info.value.message
    assert group.state == state_before
    assert group.connected == connected_before
    assert group._outbox == []  # nothing half-built is left for the next action


def test_refusal_messages_say_what_was_expected_and_what_arrived() -> None:
    """The messages name the accepted values and the refused one."""
    group = running(make())
    with pytest.raises(UnknownChannel) as channel:
        group.receive("a", "chit", "hi", 2.0)
    assert "'decisions'" in channel.value.message and "'chit'" in channel.value.message
    with pytest.raises(NotAMember) as member:
        group.receive("zed", DECISIONS, 1, 2.0)
    assert "'zed'" in member.value.message and "'a'" in member.value.message
    with pytest.raises(NotRunning) as not_running:
        ended(make()).receive("a", DECISIONS, 1, 2.0)
    assert "ended" in not_running.value.message
    with pytest.raises(InvalidDecision) as invalid:
        group.receive("a", DECISIONS, -1, 2.0)
    assert "[0, 10]" in invalid.value.message and "-1" in invalid.value.message


def test_the_action_after_a_refusal_returns_only_its_own_events() -> None:
    """A refused chat frame leaves nothing behind for the next decision."""
    group = running(make(Chat))
    with pytest.raises(NotAMember):
        group.receive("a", "chat", "to a stranger", 2.0)
    events = group.receive("a", DECISIONS, 1, 3.0)
    assert channels_of(events) == [DECISIONS, GROUP_DECISIONS]


# ---------------------------------------------------------------------- custom channels and hooks


def test_a_custom_channel_records_the_frame_then_the_handlers_messages() -> None:
    """on_chat runs; its sends follow the inbound frame, which is recorded for nobody."""
    group = running(make(Chat))
    before = group.state.copy()
    events = group.receive("b", "chat", "hello", 2.0)
    assert events == [
        Event("chat", "hello", "b", NOBODY),
        Event("chat", {"from": "b", "text": "hello"}, None, None),
        Event("receipt", "ok", None, frozenset({"b"})),
    ]
    assert group.state == before


def test_an_event_names_its_recipient_only_when_sent_to_one_member_alone() -> None:
    """``Event.recipient`` (what the event log stores): the one member in ``to``; none for the
    group, for nobody (a frame recorded), or for several members."""
    group = running(make(Chat))
    frame, to_all, receipt = group.receive("b", "chat", "hello", 2.0)
    assert (frame.recipient, to_all.recipient, receipt.recipient) == (None, None, "b")
    assert Event("chat", "hi", None, frozenset({"a", "b"})).recipient is None


class Relay(DecisionGroup):
    """A game whose ``relay`` handler sends on the channel the frame names."""

    channels: ClassVar[frozenset[str]] = frozenset({"relay"})

    def on_relay(self, participant: str, payload: Any) -> None:
        self.send(payload, "relayed")


@pytest.mark.parametrize("channel", ["", "c" * (MAX_CHANNEL_LENGTH + 1), 7, None, "a\x00b"])
def test_a_send_on_a_channel_that_cannot_be_stored_raises_at_once_and_changes_nothing(channel: Any) -> None:
    """An empty name, one past the events table's column, or no string: send raises GameFault
    naming the game (describe_fault finds the hook that called it), and the frame that ran the
    hook is refused whole; the longest name that can be stored goes through."""
    group = running(make(Relay))
    with pytest.raises(GameFault, match=rf"Relay\.send: expected a channel name of 1 to {MAX_CHANNEL_LENGTH} characters") as caught:
        group.receive("a", "relay", channel, 2.0)
    assert describe_fault(group, caught.value, "receive")["hook"] == "on_relay"
    assert not group.carried
    longest = "c" * MAX_CHANNEL_LENGTH
    assert channels_of(group.receive("a", "relay", longest, 2.0)) == ["relay", longest]


#: every channel synclab gives a meaning to: the core's events, the server's, the participant's wire
SYNCLABS_OWN = [
    "decisions", "group_decisions", "state", "subperiod", "result", "period", "game_fault",
    "control", "standin", "lobby", "hello", "ack", "error", "ping", "experiment",
]


def test_the_reserved_channels_are_every_channel_synclab_gives_a_meaning_to() -> None:
    assert frozenset(SYNCLABS_OWN) == RESERVED_CHANNELS


@pytest.mark.parametrize("channel", SYNCLABS_OWN)
def test_a_send_on_a_channel_synclab_gives_a_meaning_to_raises_at_once_and_changes_nothing(channel: str) -> None:
    """send("state", "period_end") was stored and sent as the core's own period end (and "result"
    as a score, "ack" as the server's acknowledgement): send raises GameFault naming the game,
    send and the channel, and the frame that ran the hook is refused whole; a name that merely
    looks like one (another case, a prefix) is the game's own."""
    group = running(make(Relay))
    before = group.state.copy()
    with pytest.raises(GameFault, match=rf"Relay\.send: expected a channel of the game's own, got '{channel}'") as caught:
        group.receive("a", "relay", channel, 2.0)
    assert describe_fault(group, caught.value, "receive")["hook"] == "on_relay"
    assert not group.carried and group.state == before and group.phase is Phase.RUNNING
    for own in (channel.upper(), f"{channel}s", f"my_{channel}"):
        assert channels_of(group.receive("a", "relay", own, 3.0)) == ["relay", own]


@pytest.mark.parametrize("channel", SYNCLABS_OWN)
def test_a_game_declaring_a_channel_synclab_gives_a_meaning_to_is_refused(channel: str) -> None:
    """check_channels (called when an experiment is created) refuses it, naming the game and the
    channel; a group of such a game is still built (an experiment stored before is not checked
    again: it stays playable)."""

    class Declares(DecisionGroup):
        channels: ClassVar[frozenset[str]] = frozenset({"fine", channel})

    with pytest.raises(ConfigError, match=rf"channels: Declares declares a channel it cannot take: expected a channel of the game's own, got '{channel}'"):
        Declares.check_channels()
    stored = running(make(Declares))
    assert channels_of(stored.receive("a", DECISIONS, 1, 2.0)) == [DECISIONS, GROUP_DECISIONS]
    if channel != DECISIONS:  # but a member's frame on it is refused: no core event is forged
        before = stored.state.copy()
        with pytest.raises(UnknownChannel, match=r"expected a channel in \['decisions', 'fine'\]"):
            stored.receive("a", channel, "period_end", 3.0)
        assert stored.state == before and not stored.carried


@pytest.mark.parametrize("channel", ["", "c" * (MAX_CHANNEL_LENGTH + 1), 7, "a\x00b"])
def test_a_game_declaring_a_channel_that_cannot_be_stored_is_refused(channel: Any) -> None:
    """check_channels (called when an experiment is created) refuses it, naming the game."""

    class Declares(DecisionGroup):
        channels: ClassVar[frozenset[Any]] = frozenset({"fine", channel})

    with pytest.raises(ConfigError, match=r"channels: Declares declares a channel it cannot take: expected"):
        Declares.check_channels()
    Chat.check_channels()


def test_a_custom_channel_is_accepted_before_the_start() -> None:
    """Game channels are not tied to the period: chat works while waiting."""
    group = waiting(make(Chat))
    assert channels_of(group.receive("a", "chat", "anyone?", 1.0)) == ["chat", "chat", "receipt"]


def test_when_player_disconnects_is_called_with_the_participant() -> None:
    """The hook receives who left, and what it sends is the disconnect's output."""
    group = running(make())
    assert group.disconnect("b", 2.0) == [Event("left", "b")]
    assert group.disconnect("c", 3.0) == [Event("left", "c")]
    assert group.disconnects == ["b", "c"]
    assert group.connected == {"a"}


def test_disconnect_while_waiting_calls_the_hook_and_emits_no_state() -> None:
    """Leaving before the start runs the hook and does not start or end anything."""
    group = waiting(make())
    assert group.disconnect("a", 2.0) == [Event("left", "a")]
    assert group.phase is Phase.WAITING
    assert group.connected == set()


# ---------------------------------------------------------------------- ending and the clock


def test_end_emits_period_end_once() -> None:
    """end returns period_end the first time and nothing afterwards."""
    group = running(make(period_length=60.0))
    events = group.end(10.0)
    assert [e for e in events if e.channel != RESULT] == [Event(STATE, PERIOD_END)]
    assert sorted(e.to for e in events if e.channel == RESULT) == [frozenset(m) for m in MEMBERS]
    assert group.phase is Phase.ENDED
    assert group.state.ended_at == 10.0
    assert group.end(11.0) == []
    assert group.tick(61.0) == []
    assert group.state.ended_at == 10.0


def test_end_of_a_waiting_group_ends_it_without_a_start() -> None:
    """Ending a group that never started emits only period_end and never runs the ready hook."""
    group = waiting(make())
    assert group.end(2.0) == [Event(STATE, PERIOD_END)]
    assert group.phase is Phase.ENDED
    assert group.state.started_at is None
    assert group.ready_calls == []


def test_tick_ends_the_period_exactly_at_started_at_plus_period_length() -> None:
    """tick does nothing a millisecond early and ends the period at the deadline itself."""
    group = make(period_length=30.0)
    connect_all(group, now=100.0)
    ends_at = group.state.started_at + group.timing.period_length
    assert group.state.ends_at == ends_at == 130.0
    assert group.tick(100.0) == []
    assert group.tick(ends_at - 0.001) == []
    assert group.phase is Phase.RUNNING
    timed_end = Event(STATE, PERIOD_END, tick=Tick("period_end", 0, ends_at, ends_at))
    assert [e for e in group.tick(ends_at) if e.channel != RESULT] == [timed_end]
    assert group.phase is Phase.ENDED
    assert group.state.ended_at == ends_at
    assert group.tick(ends_at + 1.0) == []


def test_a_late_tick_still_ends_the_period_once() -> None:
    """A tick well after the deadline ends the period; the next ones do nothing."""
    group = make(period_length=30.0)
    connect_all(group, now=100.0)
    assert states(group.tick(500.0)) == [PERIOD_END]
    assert group.tick(501.0) == []


def test_tick_without_a_period_length_never_ends_the_period() -> None:
    """With period_length None the period runs until end is called."""
    group = running(make())
    assert group.tick(1e12) == []
    assert group.phase is Phase.RUNNING


def test_tick_while_waiting_does_nothing() -> None:
    """No deadline exists before the start."""
    group = waiting(make(period_length=5.0))
    assert group.tick(1e9) == []
    assert group.phase is Phase.WAITING


def test_next_deadline_follows_the_phases() -> None:
    """None while waiting, ends_at while running, None once ended."""
    group = make(period_length=45.0)
    assert group.next_deadline() is None
    group.connect("a", 10.0)
    assert group.next_deadline() is None
    group.connect("b", 11.0)
    group.connect("c", 12.0)
    assert group.next_deadline() == 57.0
    group.receive("a", DECISIONS, 1, 20.0)
    assert group.next_deadline() == 57.0
    group.tick(57.0)
    assert group.next_deadline() is None


def test_next_deadline_is_none_without_a_period_length_and_after_an_early_end() -> None:
    """An open-ended period has no deadline; an ended one neither."""
    group = running(make())
    assert group.next_deadline() is None
    timed = running(make(period_length=45.0))
    timed.end(5.0)
    assert timed.next_deadline() is None


# ---------------------------------------------------------------------- snapshots


def test_restore_returns_to_the_snapshot_after_a_decision() -> None:
    """restore(snapshot) undoes a decision and keeps the connections."""
    group = running(make(period_length=30.0))
    snapshot = group.state.copy()
    group.receive("a", DECISIONS, 3, 2.0)
    assert group.state != snapshot
    group.restore(snapshot)
    assert group.state == snapshot
    assert group.group_decisions == {"a": "init-a", "b": "init-b", "c": "init-c"}
    assert group.connected == set(MEMBERS)


def test_restore_returns_to_waiting_after_a_start() -> None:
    """Undoing the start puts the group back in waiting with no deadline."""
    group = make(period_length=30.0)
    snapshot = group.state.copy()
    connect_all(group)
    group.restore(snapshot)
    assert group.phase is Phase.WAITING
    assert group.state == GroupState()
    assert group.next_deadline() is None


def test_restore_and_copy_do_not_share_mutable_state() -> None:
    """Changing the group after restore leaves the snapshot intact, vars included."""
    group = running(make())
    group.state.vars["rounds"] = [1]
    snapshot = group.state.copy()
    group.restore(snapshot)
    group.receive("a", DECISIONS, 5, 2.0)
    group.state.vars["rounds"].append(2)
    assert snapshot.decisions == {"a": "init-a", "b": "init-b", "c": "init-c"}
    assert snapshot.vars == {"rounds": [1]}


def test_a_group_built_from_a_state_resumes_it() -> None:
    """The state= argument is copied and the group continues from it."""
    original = running(make(period_length=30.0))
    original.receive("c", DECISIONS, 2, 3.0)
    resumed = Recording(MEMBERS, timing=Timing(period_length=30.0), state=original.state)
    assert resumed.state == original.state
    assert resumed.state is not original.state
    assert resumed.next_deadline() == original.state.ends_at
    assert resumed.receive("a", DECISIONS, 1, 4.0)[-1].payload == {
        "a": 1.0,
        "b": "init-b",
        "c": 2.0,
    }
    assert original.state.decisions["a"] == "init-a"


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "timing",
    [
        Timing(),
        Timing(period_length=0.5),
        Timing(period_length=60, num_subperiods=1),
        Timing(period_length=60, num_subperiods=12, rate_limit=0.1),
        Timing(rate_limit=2),
    ],
)
def test_valid_timings_are_accepted(timing: Timing) -> None:
    """Positive lengths, subperiods with a length and a positive rate limit are fine."""
    assert Recording(MEMBERS, timing=timing).timing == timing


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"period_length": 0}, "period_length"),
        ({"period_length": -1.0}, "period_length"),
        ({"period_length": math.nan}, "period_length"),
        ({"period_length": 10, "num_subperiods": 0}, "num_subperiods"),
        ({"period_length": 10, "num_subperiods": -3}, "num_subperiods"),
        ({"num_subperiods": 4}, "num_subperiods"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"rate_limit": -0.5}, "rate_limit"),
        ({"rate_limit": math.nan}, "rate_limit"),
    ],
)
def test_bad_timings_raise_config_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    """Each bad Timing value raises ConfigError whose field names it."""
    with pytest.raises(ConfigError) as info:
        Timing(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"period_length": "10"},
        {"rate_limit": "1"},
        {"period_length": 10, "num_subperiods": "2"},
        {"period_length": 10, "num_subperiods": 2.5},
        {"period_length": 10, "num_subperiods": True},
        {"period_length": True},
    ],
)
def test_timing_values_of_the_wrong_type_raise_config_error(kwargs: dict[str, Any]) -> None:
    """A non-number (or a non-integer subperiod count) must be a ConfigError, not a TypeError."""
    try:
        Timing(**kwargs)
    except ConfigError:
        return
    except TypeError as exc:
        raise AssertionError(f"Timing(**{kwargs!r}) raised TypeError, not ConfigError") from exc
    raise AssertionError(f"Timing(**{kwargs!r}) was accepted")


class Trio(DecisionGroup):
    """A game for 2 to 4 players."""

    name = "trio"
    group_sizes = (2, 4)


class Pair(DecisionGroup):
    """A game for exactly 2 players, without a name."""

    group_sizes = (2, 2)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_check_group_size_accepts_sizes_within_the_bounds(size: int) -> None:
    """Sizes between the bounds pass, and so does building a group of that size."""
    Trio.check_group_size(size)
    assert len(Trio([f"p{i}" for i in range(size)]).members) == size


@pytest.mark.parametrize("size", [0, 1, 5, 100])
def test_check_group_size_refuses_sizes_outside_the_bounds(size: int) -> None:
    """Sizes outside the bounds raise ConfigError on group_size naming the game and the size."""
    with pytest.raises(ConfigError) as info:
        Trio.check_group_size(size)
    assert info.value.field == "group_size"
    assert "trio" in info.value.message and "2 to 4" in info.value.message
    assert info.value.message.endswith(f"got {size}")


def test_check_group_size_of_a_fixed_size_game_says_exactly() -> None:
    """A (2, 2) game says 'exactly 2' and names the class when it has no name."""
    with pytest.raises(ConfigError, match="Pair is played by exactly 2 members, got 3"):
        Pair(["a", "b", "c"])


def test_the_base_class_takes_any_group_size_from_one() -> None:
    """DecisionGroup's default bounds are (1, None)."""
    DecisionGroup.check_group_size(1)
    DecisionGroup.check_group_size(10_000)
    with pytest.raises(ConfigError):
        DecisionGroup.check_group_size(0)


@pytest.mark.parametrize("members", [[], ["a", "b", "a"]])
def test_members_must_be_present_and_distinct(members: list[str]) -> None:
    """No members or a repeated member is a ConfigError on members."""
    with pytest.raises(ConfigError) as info:
        DecisionGroup(members)
    assert info.value.field == "members"


class Configured(DecisionGroup):
    """A game with a nested default config."""

    default_config: ClassVar[dict[str, Any]] = {"levels": [1, 2], "speed": 3}


def test_validate_config_fills_defaults_and_refuses_unknown_keys() -> None:
    """Missing keys take defaults; an unknown key is a ConfigError naming it."""
    assert Configured.validate_config({}) == {"levels": [1, 2], "speed": 3}
    assert Configured.validate_config({"speed": 9}) == {"levels": [1, 2], "speed": 9}
    with pytest.raises(ConfigError) as info:
        Configured.validate_config({"speed": 1, "colour": "red"})
    assert info.value.field == "config.colour"
    assert "['levels', 'speed']" in info.value.message


def test_a_groups_config_does_not_alias_the_class_defaults() -> None:
    """Mutating one group's config leaves the defaults and other groups alone."""
    first = Configured(["a"])
    first.config["levels"].append(3)
    assert Configured.default_config == {"levels": [1, 2], "speed": 3}
    assert Configured(["b"]).config["levels"] == [1, 2]


def test_payoff_and_hooks_have_neutral_defaults() -> None:
    """The base class: no role, None decisions, any decision accepted, zero payoff."""
    group = DecisionGroup(["a", "b"])
    assert group.role("a") is None
    assert group.connect("a", 1.0) + group.connect("b", 1.0) == [
        Event(STATE, PERIOD_START),
        Event(GROUP_DECISIONS, {"a": None, "b": None}),
    ]
    assert group.receive("a", DECISIONS, {"any": "thing"}, 2.0)[0].payload == {"any": "thing"}
    decisions: Mapping[str, Any] = group.group_decisions
    assert group.payoff("a", decisions) == 0.0


def test_a_state_copy_has_every_field_and_shares_no_mutable_value() -> None:
    """``GroupState.copy`` sets its fields one by one (it is made at every action): each field
    of the dataclass, a new one included, must come over, and the dicts must be copies."""
    values = {
        "phase": Phase.PAUSED, "decisions": {"a": 1.0}, "started_at": 1.5, "ends_at": 2.5, "ended_at": 3.5,
        "subperiod": 2, "vars": {"nested": {"x": [1]}}, "paused_at": 4.5, "paused_by": "a", "paused_for": 0.25,
        "flow": {"a": 0.5}, "flow_at": 5.5, "broadcast_at": 6.5, "broadcast_due": True, "earned": {"a": 0.75},
        "flow_scale": 1,
    }
    assert set(values) == {f.name for f in dataclasses.fields(GroupState)}, "a field the test does not set"
    state = GroupState(**values)
    copied = state.copy()
    assert copied == state
    for name in ("decisions", "vars", "flow", "earned"):
        assert getattr(copied, name) is not getattr(state, name)
    assert copied.vars["nested"] is not state.vars["nested"]
    assert state.clock(copied=False)["flow"] is state.flow and state.clock()["flow"] is not state.flow
