"""Subperiod ticks: absolute deadlines, late wake-ups, and the last tick before period_end."""

from __future__ import annotations

from typing import Any

import pytest

from groups import (
    GROUP_DECISIONS,
    PERIOD_END,
    RESULT,
    STATE,
    SUBPERIOD,
    Event,
    GameFault,
    PublicGoods,
    Timing,
)

T0 = 1_000_000.0


def _running(length: float, n: int | None) -> PublicGoods:
    group = PublicGoods(["a", "b"], timing=Timing(period_length=length, num_subperiods=n))
    group.connect("a", T0 - 1)
    group.connect("b", T0)
    return group


def _channels(events: list[Event]) -> list[str]:
    return [e.channel for e in events]


@pytest.mark.parametrize(("length", "n"), [(3.0, 3), (60.0, 7), (10.0, 1), (0.9, 4), (120.0, 120)])
def test_subperiod_deadlines_are_start_plus_k_times_the_interval(length: float, n: int) -> None:
    """Deadline k is started_at + k·L/N for k = 1..N, the last one exactly the period's end."""
    group = _running(length, n)
    seen = []
    for _ in range(n):
        due = group.next_deadline()
        assert due is not None
        seen.append(due)
        group.tick(due)
    assert seen == pytest.approx([T0 + length * k / n for k in range(1, n + 1)], abs=1e-9)
    assert seen[-1] == T0 + length
    assert group.phase.value == "ended"
    assert group.next_deadline() is None


def test_a_tick_snapshots_the_decisions_and_broadcasts_them() -> None:
    """Each subperiod tick sends `subperiod` {index, group_decisions} and `group_decisions`."""
    group = _running(3.0, 3)
    group.receive("a", "decisions", 4, T0 + 0.5)
    events = group.tick(T0 + 1.0)
    assert _channels(events) == [SUBPERIOD, GROUP_DECISIONS, RESULT, RESULT]
    assert events[0].payload == {"index": 0, "group_decisions": {"a": 4.0, "b": 0.0}}
    assert events[1].payload == {"a": 4.0, "b": 0.0}
    assert group.state.subperiod == 1


def test_the_last_subperiod_comes_before_period_end_in_the_same_tick() -> None:
    """At the period's end the last subperiod is applied first, then `state: period_end`."""
    group = _running(3.0, 3)
    group.tick(T0 + 1.0)
    group.tick(T0 + 2.0)
    events = group.tick(T0 + 3.0)
    assert _channels(events) == [SUBPERIOD, GROUP_DECISIONS, RESULT, RESULT, STATE]
    assert events[0].payload["index"] == 2
    assert events[-1].payload == PERIOD_END


def test_a_late_wake_up_applies_every_missed_tick_without_shifting_later_ones() -> None:
    """Waking 2.5 intervals late applies ticks 1 and 2; tick 3 stays at its own deadline."""
    group = _running(4.0, 4)
    events = group.tick(T0 + 2.5)
    assert [e.payload["index"] for e in events if e.channel == SUBPERIOD] == [0, 1]
    assert group.next_deadline() == T0 + 3.0
    assert group.tick(T0 + 2.9) == []


def test_a_wake_up_after_the_whole_period_ends_it_with_every_subperiod() -> None:
    """A tick long after the end applies all subperiods, then ends at the scheduled time."""
    group = _running(3.0, 3)
    events = group.tick(T0 + 100)
    assert _channels(events) == [SUBPERIOD, GROUP_DECISIONS, RESULT, RESULT] * 3 + [STATE]
    assert group.state.ended_at == T0 + 3.0


def test_an_early_tick_changes_nothing() -> None:
    """A tick before the first deadline emits nothing."""
    group = _running(3.0, 3)
    assert group.tick(T0 + 0.999) == []
    assert group.state.subperiod == 0


def test_continuous_time_has_only_the_period_end() -> None:
    """Without num_subperiods the only deadline is the end of the period."""
    group = _running(5.0, None)
    assert group.next_deadline() == T0 + 5.0
    assert _channels(group.tick(T0 + 5.0)) == [RESULT, RESULT, STATE]


def test_restore_returns_the_subperiod_count() -> None:
    """A snapshot taken before a tick restores the subperiod counter too."""
    group = _running(3.0, 3)
    snapshot = group.state.copy()
    group.tick(T0 + 1.0)
    group.restore(snapshot)
    assert group.state.subperiod == 0
    assert group.next_deadline() == T0 + 1.0


def test_earned_is_the_sum_of_the_results_so_far_and_survives_the_stored_clock() -> None:
    """With subperiods, ``earned`` adds each result's score; it round-trips through clock()."""
    group = _running(4.0, 4)
    group.receive("a", "decisions", 10, T0 + 0.5)  # a gives all: a gets 0 + 0.5·10 = 5, b gets 15
    scores: dict[str, float] = {"a": 0.0, "b": 0.0}
    for k in (1, 2):
        for event in group.tick(T0 + k):
            if event.channel == RESULT:
                (who,) = event.to or ()
                scores[who] += event.payload["score"]
    assert scores == {"a": 2.5, "b": 7.5}
    assert {p: group.earned(p, T0 + 2.5) for p in "ab"} == scores
    stored = group.state.copy()
    stored.set_clock(group.state.clock())
    again = PublicGoods(["a", "b"], timing=group.timing, state=stored)
    assert again.earned("b", T0 + 2.5) == 7.5


def test_earned_in_continuous_time_integrates_the_flow_payoff_up_to_now() -> None:
    """In continuous time ``earned`` is the integral of the flow payoff so far over the length."""
    group = _running(10.0, None)
    assert group.earned("a", T0 + 2) == pytest.approx(10 * 2 / 10)  # 10 each while nobody gives
    group.receive("a", "decisions", 10, T0 + 2)
    assert group.earned("a", T0 + 4) == pytest.approx((10 * 2 + 5 * 2) / 10)
    assert group.earned("b", T0 + 4) == pytest.approx((10 * 2 + 15 * 2) / 10)
    results = {next(iter(e.to or ())): e.payload["score"] for e in group.tick(T0 + 10) if e.channel == RESULT}
    assert {p: group.earned(p, T0 + 99) for p in "ab"} == pytest.approx(results)


class Faulty(PublicGoods):
    """A game whose payoff gives what cannot be a score (set per test), or raises."""

    gives: object = float("nan")

    def payoffs(self, decisions: Any) -> dict[str, float]:  # as the base class asks each member's
        return {p: self.payoff(p, decisions) for p in self.members}

    def payoff(self, participant: str, decisions: Any) -> float:
        if isinstance(self.gives, Exception):
            raise self.gives
        return self.gives  # type: ignore[return-value]


@pytest.mark.parametrize("gives", [float("nan"), float("inf"), "lots", None, True, ZeroDivisionError("x")])
@pytest.mark.parametrize("n", [3, None])
def test_a_payoff_that_is_no_finite_number_changes_nothing_of_the_tick_it_fails(gives: object, n: int | None) -> None:
    """With subperiods and in continuous time, a payoff of NaN, inf, a string, None or a bool is a
    GameFault naming the game (one that raises, its own exception), raised before the tick changed
    anything: the subperiod's index, the phase and the flow stay as they were, so the tick can be
    tried again, and no score that could not be stored is ever made."""
    group = Faulty(["a", "b"], timing=Timing(period_length=3.0, num_subperiods=n))
    group.connect("a", T0 - 1)
    group.connect("b", T0)
    group.gives = gives
    before = group.state.copy()
    due = group.next_deadline()
    assert due is not None
    if isinstance(gives, Exception):
        with pytest.raises(type(gives)):
            group.tick(due)
    else:
        hook = "payoff" if n else "payoffs"  # continuous time asks payoffs, which Faulty overrides
        with pytest.raises(GameFault, match=rf"Faulty\.{hook} gave .* a payoff must be a finite number"):
            group.tick(due)
    after = group.state
    assert (after.phase, after.subperiod, after.flow, after.earned) == (before.phase, before.subperiod, before.flow, before.earned)
    group.gives = 1.5  # mended (or a game that failed once): the same tick goes through
    events = group.tick(due)
    results = [e.payload["score"] for e in events if e.channel == RESULT]
    assert results and all(isinstance(score, float) and score == score for score in results)


@pytest.mark.parametrize("gives", [float("nan"), float("inf"), "lots", "3", None, True])
def test_earned_in_continuous_time_refuses_a_payoff_that_is_no_finite_number(gives: object) -> None:
    """The score so far (a hello's) checks the payoff as every accrual does: a GameFault naming
    payoff, the game and the participant, and the state left as it was. It gave NaN or inf (not
    JSON, on the wire), a TypeError or ValueError, or took "3" and True as numbers."""
    group = Faulty(["a", "b"], timing=Timing(period_length=3.0))
    group.connect("a", T0 - 1)
    group.connect("b", T0)
    group.gives = 1.5
    assert group.earned("a", T0 + 1) == pytest.approx(1.5 / 3)
    group.gives = gives
    before = group.state.copy()
    with pytest.raises(GameFault, match=r"Faulty\.payoff gave .* for 'a': a payoff must be a finite number") as caught:
        group.earned("a", T0 + 1)
    assert caught.value.hook == "payoff"
    assert (group.state.flow, group.state.flow_at) == (before.flow, before.flow_at)
    assert group.earned("a", T0) == 0.0  # up to the last accrual the payoff is not asked
