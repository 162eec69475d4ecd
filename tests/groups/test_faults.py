"""A game's failure in the core: described for the record, and the period ended without the game."""

from __future__ import annotations

from typing import Any

import pytest

from groups import (
    GAME_FAULT,
    GROUP_DECISIONS,
    NOBODY,
    PERIOD_END,
    RESULT,
    STATE,
    SUBPERIOD,
    GameFault,
    Phase,
    PublicGoods,
    Timing,
    describe_fault,
)

T0 = 1_000_000.0
FAULT = {"hook": "payoff", "error": "ZeroDivisionError", "message": "broken", "during": "end"}


class Breakable(PublicGoods):
    """public_goods whose every hook raises once ``broken`` is set."""

    channels = frozenset({"chat"})
    broken = False

    def _check(self) -> None:
        if self.broken:
            raise ZeroDivisionError("broken")

    def payoffs(self, decisions: Any) -> dict[str, float]:  # as the base class asks each member's
        return {p: self.payoff(p, decisions) for p in self.members}

    def payoff(self, participant: str, decisions: Any) -> float:
        self._check()
        return super().payoff(participant, decisions)

    def validate_decision(self, participant: str, decision: Any) -> Any:
        self._check()
        return super().validate_decision(participant, decision)

    def initial_decision(self, participant: str) -> Any:
        self._check()
        return super().initial_decision(participant)

    def on_chat(self, participant: str, payload: Any) -> None:
        self._score_chat(payload)

    def _score_chat(self, payload: Any) -> None:  # a helper of the game's own: not a hook
        raise KeyError(payload)


def started(n: int | None, **timing: Any) -> Breakable:
    group = Breakable(["a", "b"], timing=Timing(period_length=4.0, num_subperiods=n, **timing))
    group.connect("a", T0)
    group.connect("b", T0)
    return group


def failure(action: Any) -> BaseException:
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


def test_a_fault_names_the_innermost_hook_the_error_and_its_message() -> None:
    """Through the core's own frames (a tick, a subperiod's score) to the game's hook that raised;
    a channel's handler by its name, not the game's helper under it; the core's refusal of a
    payoff by the hook it names; nothing of the game on the way: no hook."""
    group = started(2)
    group.broken = True
    ticked = failure(lambda: group.tick(T0 + 2))
    assert describe_fault(group, ticked, "tick") == {
        "hook": "payoff", "error": "ZeroDivisionError", "message": "broken", "during": "tick"
    }
    chat = failure(lambda: group.receive("a", "chat", "hi", T0 + 1))
    assert describe_fault(group, chat, "receive")["hook"] == "on_chat"
    refused = GameFault("Breakable.payoff gave nan for 'a': a payoff must be a finite number", "payoff")
    assert describe_fault(group, refused, "tick")["hook"] == "payoff"
    other = started(2)
    assert describe_fault(other, ticked, "tick")["hook"] is None  # another group's hook is not this one's
    assert describe_fault(group, ValueError("x" * 1000), "end")["message"] == "x" * 297 + "..."


@pytest.mark.parametrize("paused", [False, True])
def test_ending_without_the_game_keeps_the_scored_subperiods_and_asks_the_game_nothing(paused: bool) -> None:
    """Subperiod 0 scored; then the game fails on everything. end_faulted applies nothing that
    is due (it would ask the game), records the fault, sends the waiting broadcast and ends the
    period now: results made before stay, no result is made."""
    group = started(4, rate_limit=5.0)
    events = group.tick(T0 + 1)
    assert [e.channel for e in events if e.channel == RESULT] == [RESULT, RESULT]
    group.receive("a", "decisions", 3, T0 + 1.2)  # within the rate limit: its broadcast waits
    if paused:
        group.pause(T0 + 1.5)
    group.broken = True
    if not paused:  # (a pause stops the ticks: end would have nothing to score with subperiods)
        assert isinstance(failure(lambda: group.end(T0 + 2.5)), ZeroDivisionError)
    ended = group.end_faulted(T0 + 2.5, FAULT)
    assert [(e.channel, e.payload if e.channel != GROUP_DECISIONS else None) for e in ended] == [
        (GAME_FAULT, {**FAULT, "ended": True}),
        *([(GROUP_DECISIONS, None)] if not paused else []),
        (STATE, PERIOD_END),
    ]
    assert ended[0].to == NOBODY and ended[-1].tick is None
    state = group.state
    assert (state.phase, state.ended_at, state.subperiod) == (Phase.ENDED, T0 + 2.5, 1)
    assert group.earned("a", T0 + 9) == pytest.approx(10.0 / 4)  # subperiod 0's score: (10 - 0 + 0.5 * 0) / 4
    assert group.end_faulted(T0 + 3, FAULT) == [] and group.end(T0 + 3) == []  # ended: nothing more
    assert group.next_deadline() is None


def test_ending_without_the_game_in_continuous_time_makes_no_result_and_drops_the_flow() -> None:
    """The flow the game could not finish is no score: no result, and earned is 0 as stored."""
    group = started(None)
    group.receive("a", "decisions", 4, T0 + 1)
    group.broken = True
    assert isinstance(failure(lambda: group.tick(T0 + 4)), ZeroDivisionError)
    ended = group.end_faulted(T0 + 9, FAULT)
    assert [e.channel for e in ended] == [GAME_FAULT, STATE]
    assert group.state.ended_at == T0 + 4  # the deadline was past: the period ended at it
    assert group.earned("a", T0 + 10) == 0.0


def test_a_waiting_group_ended_without_the_game_ends_before_it_started() -> None:
    group = Breakable(["a", "b"], timing=Timing(period_length=4.0))
    group.broken = True
    ended = group.end_faulted(T0, FAULT)
    assert [e.channel for e in ended] == [GAME_FAULT, STATE] and group.state.phase is Phase.ENDED


def test_the_events_applied_before_a_refusal_are_taken_without_applying_anything_again() -> None:
    """A broadcast fell due, then a subperiod the game fails on: the refused action leaves the
    broadcast carried; take_carried gives it without asking the game again (tick would fail)."""
    group = started(4, rate_limit=0.5)
    group.receive("a", "decisions", 3, T0 + 0.1)
    group.receive("a", "decisions", 4, T0 + 0.2)  # waits for the rate limit: due at 0.6 s
    group.broken = True
    failure(lambda: group.receive("b", "decisions", 1, T0 + 1.5))  # the subperiod at 1 s fails
    assert group.carried
    carried = group.take_carried()
    assert [e.channel for e in carried] == [GROUP_DECISIONS] and not group.carried
    assert SUBPERIOD not in [e.channel for e in carried]


class WholeGroup(PublicGoods):
    """public_goods whose payoffs (the whole group's at once) gives ``gives`` for member "a"."""

    gives: Any = float("nan")

    def payoffs(self, decisions: Any) -> Any:
        rates = super().payoffs(decisions)
        return {**rates, "a": self.gives} if isinstance(self.gives, float) else self.gives


@pytest.mark.parametrize("gives", [float("nan"), [1.0, 2.0], {"b": 1.0}])
def test_a_fault_in_an_overridden_payoffs_names_payoffs_not_payoff(gives: Any) -> None:
    """In continuous time the core asks payoffs; a game that overrides it and gives a NaN, no
    mapping or no value for a member is reported as failing in payoffs, the hook that gave it."""
    group = WholeGroup(["a", "b"], timing=Timing(period_length=4.0))
    group.connect("a", T0)
    group.connect("b", T0)
    group.gives = gives
    fault = failure(lambda: group.tick(T0 + 4))
    assert isinstance(fault, GameFault) and str(fault).startswith("WholeGroup.payoffs gave ")
    assert describe_fault(group, fault, "tick")["hook"] == "payoffs"
    assert group.state.phase is Phase.RUNNING  # nothing of the tick applied


class ReadyFails(PublicGoods):
    """public_goods whose start of the period raises in ``when_all_players_ready`` after sending."""

    pause_when_disconnected = True

    def when_all_players_ready(self) -> None:
        self.state.vars["ready"] = True
        self.send("note", "ready")
        raise RuntimeError("cannot start")


@pytest.mark.parametrize("by", ["arrival", "experimenter"])
def test_a_start_the_game_fails_on_leaves_the_group_waiting_as_it_was(by: str) -> None:
    """The game fails on the period's start (its ``when_all_players_ready`` raises after it
    changed the state and sent a frame): the group is left waiting, nothing of the start made
    (no ``period_start``, no decisions, no vars), and the failure raised. An arrival that makes
    the start still counts the member connected. The period was left running with its
    ``period_start`` carried out as events that fell due before the failure."""
    group = ReadyFails(["a", "b"], timing=Timing(period_length=4.0))
    group.connect("a", T0)
    before = group.state.copy()
    if by == "arrival":
        assert str(failure(lambda: group.connect("b", T0 + 1))) == "cannot start"
    else:
        assert str(failure(lambda: group.start(T0 + 1))) == "cannot start"
    assert group.state == before and group.state.phase is Phase.WAITING
    assert not group.carried and group.tick(T0 + 2) == []
    assert group.connected == ({"a", "b"} if by == "arrival" else {"a"})


def test_a_pause_the_game_fails_on_leaves_the_period_running_and_a_failed_departure_counts() -> None:
    """The experimenter's pause accrues the payoff, which raises: the period runs on, as it was,
    with the broadcast that waited for the rate limit still waiting (it was sent, and the state
    said so, while the pause failed). A departure whose pause fails counts the member gone, and
    leaves the period running too."""
    group = started(None, rate_limit=1.0)
    group.receive("a", "decisions", 3, T0 + 0.1)
    group.receive("a", "decisions", 4, T0 + 0.2)  # waits for the rate limit: due at 1.1 s
    group.broken = True
    before = group.state.copy()
    failure(lambda: group.pause(T0 + 0.5))
    assert group.state == before and group.state.phase is Phase.RUNNING and not group.carried
    group.pause_when_disconnected = True
    failure(lambda: group.disconnect("b", T0 + 0.6))
    assert group.state == before and group.connected == {"a"} and not group.carried

class VarReadyFails(PublicGoods):
    """Its ready hook fails after the period's start was applied: decisions, events, a var."""

    def when_all_players_ready(self) -> None:
        self.state.vars["round"] = 1
        raise RuntimeError("not ready")


@pytest.mark.parametrize("game", ["initial_decision", "when_all_players_ready"])
def test_a_period_start_the_game_fails_on_leaves_the_group_waiting_as_it_was(game: str) -> None:
    """The group was left running (phase, start, end) with no decisions and none of it stored: its
    clock then ended a period nobody was told had started, with results of decision null, and the
    experiment was done. Now nothing of the start stays; an arrival still counts."""
    group: PublicGoods = VarReadyFails(["a", "b"], timing=Timing(period_length=4.0))
    if game == "initial_decision":
        group = Breakable(["a", "b"], timing=Timing(period_length=4.0))
        group.broken = True
    group.connect("a", T0)
    with pytest.raises((ZeroDivisionError, RuntimeError)):
        group.connect("b", T0 + 1)
    assert group.phase is Phase.WAITING
    assert (group.state.started_at, group.state.ends_at, group.state.decisions, group.state.vars) == (None, None, {}, {})
    assert group.next_deadline() is None
    assert group.connected == {"a", "b"}
    assert group.tick(T0 + 10) == []  # nothing of the failed start comes out with a later action
    assert group.phase is Phase.WAITING


class HalfDoneChat(PublicGoods):
    """Its chat handler keeps a var and sends, then raises."""

    channels = frozenset({"chat"})

    def on_chat(self, participant: str, payload: Any) -> None:
        self.state.vars["said"] = payload
        self.send("echo", payload)
        raise ValueError("too long")


def test_a_channel_handler_that_raises_leaves_no_trace_of_what_it_did_before() -> None:
    """What the handler kept (a var) is put back with its frame refused. It stayed in the core,
    unstored, and went out with the next action's write and state."""
    group = HalfDoneChat(["a", "b"], timing=Timing(period_length=4.0))
    group.connect("a", T0)
    group.connect("b", T0)
    before = group.state.copy()
    with pytest.raises(ValueError, match="too long"):
        group.receive("a", "chat", "hello", T0 + 1)
    assert group.state == before and "said" not in group.state.vars
    assert [e.channel for e in group.receive("a", "decisions", 3, T0 + 2)] == ["decisions", GROUP_DECISIONS]
    assert "said" not in group.state.vars
