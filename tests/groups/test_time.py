"""Time in the core: tick records, scores, the continuous-time integral, the rate limit, pauses."""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from groups import (
    DECISIONS,
    GROUP_DECISIONS,
    PAUSED_BY_DISCONNECT,
    PAUSED_BY_EXPERIMENTER,
    PERIOD,
    PERIOD_END,
    RESULT,
    STATE,
    SUBPERIOD,
    Bimatrix,
    DecisionGroup,
    Event,
    InvalidState,
    NotRunning,
    Phase,
    PublicGoods,
    Tick,
    Timing,
)

T0 = 1_000_000.0
PD = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}


def bimatrix(length: float = 10.0, n: int | None = None, rate: float | None = None) -> Bimatrix:
    group = Bimatrix(["row", "col"], timing=Timing(length, n, rate), config={"payoffs": PD})
    group.connect("row", T0 - 5)
    group.connect("col", T0)
    return group


def results(events: Sequence[Event]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.channel == RESULT:
            assert e.to is not None and len(e.to) == 1
            out.setdefault(next(iter(e.to)), []).append(e.payload)
    return out


def broadcasts(events: Sequence[Event]) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.channel == GROUP_DECISIONS]


# --------------------------------------------------------------------------- tick records


@pytest.mark.parametrize(("length", "n"), [(3.0, 3), (10.0, 4), (1.0, 1), (7.5, 6)])
def test_each_tick_records_when_it_was_due_and_when_it_ran(length: float, n: int) -> None:
    """A tick applied on time has scheduled == actual; its index counts from 0; the end is a tick too."""
    group = bimatrix(length, n)
    ticks: list[Tick] = []
    for _ in range(n):
        due = group.next_deadline()
        assert due is not None
        ticks += [e.tick for e in group.tick(due) if e.tick is not None]
    assert [(t.kind, t.index) for t in ticks] == [("subperiod", k) for k in range(n)] + [("period_end", 0)]
    assert [t.scheduled_at for t in ticks] == pytest.approx(
        [T0 + length * k / n for k in range(1, n + 1)] + [T0 + length], abs=1e-9
    )
    assert all(t.actual_at == t.scheduled_at and not t.late for t in ticks)


def test_a_late_wake_up_records_each_missed_tick_as_late_at_its_own_schedule() -> None:
    """Waking 2.7 s into a 4 x 1 s period: ticks 0 and 1 ran at 2.7, scheduled at 1 and 2, late."""
    group = bimatrix(4.0, 4)
    ticks = [e.tick for e in group.tick(T0 + 2.7) if e.tick is not None]
    assert [(t.index, t.scheduled_at, t.actual_at, t.late) for t in ticks] == [
        (0, T0 + 1.0, T0 + 2.7, True),
        (1, T0 + 2.0, T0 + 2.7, True),
    ]
    assert group.next_deadline() == T0 + 3.0
    on_time = [e.tick for e in group.tick(T0 + 3.01) if e.tick is not None]
    assert len(on_time) == 1 and not on_time[0].late  # 10 ms: within LATE_AFTER


def test_an_experimenter_end_is_not_a_tick() -> None:
    """Ending by hand emits period_end without a tick record."""
    group = bimatrix(10.0, 2)
    events = group.end(T0 + 3.0)
    assert [e.tick for e in events if e.channel == STATE] == [None]


# --------------------------------------------------------------------------- subperiod scores


def test_each_subperiod_scores_the_payoff_of_its_snapshot_over_n() -> None:
    """Row plays A, col B in subperiod 0 (row gets 0, col 5), both A in subperiod 1 (3 each); N = 2."""
    group = bimatrix(10.0, 2)
    group.receive("row", DECISIONS, 1.0, T0 + 1)
    group.receive("col", DECISIONS, 0.0, T0 + 2)
    first = results(group.tick(T0 + 5))
    group.receive("col", DECISIONS, 1.0, T0 + 6)
    last = results(group.tick(T0 + 10))
    assert first == {
        "row": [{"subperiod": 0, "decision": 1.0, "score": 0.0}],
        "col": [{"subperiod": 0, "decision": 0.0, "score": 2.5}],
    }
    assert last == {
        "row": [{"subperiod": 1, "decision": 1.0, "score": 1.5}],
        "col": [{"subperiod": 1, "decision": 1.0, "score": 1.5}],
    }
    assert group.phase is Phase.ENDED


def test_a_decision_after_a_deadline_but_before_the_tick_misses_that_snapshot() -> None:
    """The tick due at T0+5 is applied before a decision stamped T0+5.02, not after it."""
    group = bimatrix(10.0, 2)
    events = group.receive("row", DECISIONS, 1.0, T0 + 5.02)
    assert [e.channel for e in events][:2] == [SUBPERIOD, GROUP_DECISIONS]
    assert events[0].payload["group_decisions"] == {"row": 0.5, "col": 0.5}
    assert events[-2].channel == DECISIONS


def test_a_decision_after_the_end_is_refused_and_the_end_is_still_reported() -> None:
    """A decision stamped after ends_at is refused; the end it triggered comes out of the next action."""
    group = bimatrix(10.0, None)
    with pytest.raises(NotRunning):
        group.receive("row", DECISIONS, 1.0, T0 + 10.5)
    assert group.phase is Phase.ENDED
    assert group.state.ended_at == T0 + 10
    assert group.carried
    carried = group.tick(T0 + 10.6)
    assert not group.carried
    assert [e.channel for e in carried] == [RESULT, RESULT, STATE]
    assert carried[-1].payload == PERIOD_END


# --------------------------------------------------------------------------- continuous time


def test_the_continuous_score_is_the_time_weighted_mean_flow_payoff() -> None:
    """Hand computed, prisoner's dilemma, L = 10:

    [0, 2) both 0.5: row 2.25, col 2.25 · [2, 6) row 1, col 0.5: row 1.5, col 4 ·
    [6, 10) row 1, col 0: row 0, col 5. Row (4.5 + 6 + 0) / 10 = 1.05; col (4.5 + 16 + 20) / 10 = 4.05.
    """
    group = bimatrix(10.0)
    group.receive("row", DECISIONS, 1.0, T0 + 2)
    group.receive("col", DECISIONS, 0.0, T0 + 6)
    scored = results(group.tick(T0 + 10))
    assert scored["row"] == [{"subperiod": None, "decision": 1.0, "score": pytest.approx(1.05, abs=1e-9)}]
    assert scored["col"] == [{"subperiod": None, "decision": 0.0, "score": pytest.approx(4.05, abs=1e-9)}]


def test_a_late_end_integrates_up_to_the_deadline_not_the_wake_up() -> None:
    """Waking 3 s late adds nothing: the flow is integrated to ends_at."""
    group = bimatrix(10.0)
    scored = results(group.tick(T0 + 13))
    assert scored["row"][0]["score"] == pytest.approx(2.25)


def test_a_pause_is_left_out_of_the_integral() -> None:
    """Paused from 2 to 7 with row on A: the period runs to T0+15 and the pause counts for nothing."""
    group = bimatrix(10.0)
    group.receive("row", DECISIONS, 1.0, T0 + 1)
    group.pause(T0 + 2)
    group.resume(T0 + 7)
    assert group.state.ends_at == T0 + 15
    scored = results(group.tick(T0 + 15))
    # [0,1) 2.25 · [1,2) and [7,15) row A, col 0.5: 1.5 for 9 s
    assert scored["row"][0]["score"] == pytest.approx((2.25 + 1.5 * 9) / 10)


def test_the_flow_integral_survives_a_snapshot_through_json() -> None:
    """clock() and set_clock() carry the integral, so a restored group scores the same."""
    group = bimatrix(10.0)
    group.receive("row", DECISIONS, 1.0, T0 + 2)
    stored = group.state.clock()
    restored = Bimatrix(["row", "col"], timing=group.timing, config={"payoffs": PD}, state=group.state)
    restored.state.set_clock(stored)
    a = results(group.tick(T0 + 10))
    b = results(restored.tick(T0 + 10))
    assert a == b


class Huge(PublicGoods):
    """public_goods whose flow payoff is the largest float (or its negative) for a contribution of 1 (0)."""

    def payoffs(self, decisions: Any) -> dict[str, float]:  # as the base class asks each member's
        return {p: self.payoff(p, decisions) for p in self.members}

    def payoff(self, participant: str, decisions: Any) -> float:
        return sys.float_info.max if decisions[participant] == 1 else -sys.float_info.max


@pytest.mark.parametrize("paused", [False, True])
def test_a_flow_payoff_whose_integral_is_past_a_floats_range_scores_its_finite_average(paused: bool) -> None:
    """A flow payoff of the largest float a second for 10 s (a for the whole period; b for the
    last 6 s, after 4 s of its negative): the integrals are past a float's range, the scores
    (time averages) are not: the largest float, and a fifth of it. Every answer on the way is a
    finite number: the score so far (a hello's), the clock stored through JSON and read back (a
    restart), the results. The integral was ``inf``: the score so far and the result ``inf``, the
    result's event ``null`` in JSON, the clock's flow ``null``, which a restart could not read."""
    group = Huge(["a", "b"], timing=Timing(10.0))
    group.connect("a", T0)
    group.connect("b", T0)
    group.receive("a", DECISIONS, 1, T0)
    group.receive("b", DECISIONS, 1, T0 + 4)
    if paused:
        group.pause(T0 + 5)
        group.resume(T0 + 6)
    end = group.state.ends_at
    assert end is not None
    assert group.earned("a", end) == pytest.approx(sys.float_info.max, rel=1e-12)
    stored = json.loads(json.dumps(group.state.clock(), allow_nan=False))  # (inf would raise here)
    restored = Huge(["a", "b"], timing=group.timing, state=group.state)
    restored.state.set_clock(stored)
    scored, again = results(group.tick(end)), results(restored.tick(end))
    assert scored == again
    assert scored["a"][0]["score"] == pytest.approx(sys.float_info.max, rel=1e-12)
    assert scored["b"][0]["score"] == pytest.approx(sys.float_info.max / 5, rel=1e-12)
    assert all(math.isfinite(r[0]["score"]) for r in scored.values())


def test_an_ordinary_flow_is_kept_as_its_integral_unscaled() -> None:
    """Short of a float's range the flow is the integral as ever, and the stored clock has no scale."""
    group = bimatrix(10.0)
    group.receive("row", DECISIONS, 1.0, T0 + 2)
    assert group.state.flow == {"row": 2.25 * 2, "col": 2.25 * 2} and group.state.flow_scale == 0
    assert "flow_scale" not in group.state.clock()


# --------------------------------------------------------------------------- rate limit


def test_decisions_inside_the_rate_limit_are_coalesced_into_one_broadcast() -> None:
    """rate_limit 1 s: two decisions inside the first second go out once, at T0+1, with the latest state."""
    group = bimatrix(10.0, rate=1.0)
    first = group.receive("row", DECISIONS, 0.2, T0 + 0.2)
    second = group.receive("col", DECISIONS, 0.7, T0 + 0.5)
    assert broadcasts(first) == broadcasts(second) == []
    assert [e.channel for e in first] == [DECISIONS]  # still recorded as it arrives
    assert group.next_deadline() == T0 + 1.0
    assert broadcasts(group.tick(T0 + 1.0)) == [{"row": 0.2, "col": 0.7}]
    assert group.next_deadline() == T0 + 10.0  # nothing waits any more
    later = group.receive("row", DECISIONS, 0.9, T0 + 2.5)  # a second after the last: at once
    assert broadcasts(later) == [{"row": 0.9, "col": 0.7}]


def test_the_period_end_flushes_a_waiting_broadcast_before_period_end() -> None:
    """A decision 0.1 s before the end is broadcast before `state: period_end`."""
    group = bimatrix(10.0, rate=1.0)
    group.receive("row", DECISIONS, 1.0, T0 + 9.5)
    group.receive("row", DECISIONS, 0.0, T0 + 9.9)
    channels = [e.channel for e in group.tick(T0 + 10.0)]
    assert channels.index(GROUP_DECISIONS) < channels.index(STATE)


@pytest.mark.parametrize("seed", range(20))
def test_coalescing_never_drops_the_latest_state_nor_breaks_the_limit(seed: int) -> None:
    """Random decisions and wake-ups: broadcasts are >= rate_limit apart, and the last one is the final state.

    The one exception is the period's end, which sends what waits at once (it cannot wait).
    """
    rng = random.Random(seed)
    rate, length = 0.25, 5.0
    group = PublicGoods(["a", "b", "c"], timing=Timing(length, None, rate))
    sent: list[tuple[float, dict[str, Any]]] = []
    recorded = 0
    for p in ("a", "b", "c"):
        for e in group.connect(p, T0):
            if e.channel == GROUP_DECISIONS:
                sent.append((T0, e.payload))
    now = T0
    for _ in range(300):
        now += rng.expovariate(60)
        due = group.next_deadline()
        if due is not None and due <= now and rng.random() < 0.5:
            now = due  # the timer fires on time, or the decision gets there first
            events = group.tick(now)
        else:
            try:
                events = group.receive(rng.choice("abc"), DECISIONS, rng.randint(0, 10), now)
            except NotRunning:
                events = group.tick(now)
        recorded += sum(e.channel == DECISIONS for e in events)
        at_end = any(e.payload == PERIOD_END for e in events if e.channel == STATE)
        sent += [(-1.0 if at_end else now, e.payload) for e in events if e.channel == GROUP_DECISIONS]
        if group.phase is Phase.ENDED:
            break
    sent += [(-1.0, e.payload) for e in group.tick(T0 + 100) if e.channel == GROUP_DECISIONS]
    assert group.phase is Phase.ENDED
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent) if b[0] != -1.0]
    assert min(gaps) >= rate - 1e-9
    assert sent[-1][1] == group.group_decisions
    assert recorded > 50


# --------------------------------------------------------------------------- pause and resume


def test_pause_stops_the_clock_and_resume_shifts_every_deadline() -> None:
    """L = 3, N = 3, paused from 0.5 to 2.5: the ticks move to 3, 4 and 5."""
    group = bimatrix(3.0, 3)
    paused = group.pause(T0 + 0.5)
    assert [e.channel for e in paused] == [PERIOD]
    assert paused[0].payload["status"] == "paused"
    assert paused[0].payload["paused_by"] == PAUSED_BY_EXPERIMENTER
    assert group.next_deadline() is None
    assert group.tick(T0 + 10) == []
    with pytest.raises(NotRunning):
        group.receive("row", DECISIONS, 1.0, T0 + 1)
    resumed = group.resume(T0 + 2.5)
    assert resumed[0].payload["status"] == "running"
    assert resumed[0].payload["ends_at"] == round((T0 + 5.0) * 1000)
    seen = []
    while (due := group.next_deadline()) is not None:
        seen.append(due)
        group.tick(due)
    assert seen == pytest.approx([T0 + 3.0, T0 + 4.0, T0 + 5.0])
    assert group.state.ended_at == T0 + 5.0


def test_pause_and_resume_are_refused_in_the_wrong_phase() -> None:
    """Pausing a waiting, paused or ended group and resuming a running one raise InvalidState."""
    waiting = Bimatrix(["row", "col"], timing=Timing(10.0))
    with pytest.raises(InvalidState):
        waiting.pause(T0)
    group = bimatrix(10.0)
    with pytest.raises(InvalidState):
        group.resume(T0 + 1)
    group.pause(T0 + 1)
    with pytest.raises(InvalidState):
        group.pause(T0 + 2)
    group.end(T0 + 3)
    with pytest.raises(InvalidState):
        group.resume(T0 + 4)


def test_a_pause_applies_a_tick_that_fell_due_first() -> None:
    """Pausing at T0+1.01 when subperiod 0 was due at T0+1 scores that subperiod before pausing."""
    group = bimatrix(3.0, 3)
    events = group.pause(T0 + 1.01)
    assert events[0].channel == SUBPERIOD
    assert events[-1].channel == PERIOD


def test_ending_a_paused_period_ends_it_now() -> None:
    """end() while paused ends the period at once."""
    group = bimatrix(10.0)
    group.pause(T0 + 2)
    events = group.end(T0 + 4)
    assert events[-1] == Event(STATE, PERIOD_END)
    assert group.state.ended_at == T0 + 4
    assert results(events)["row"][0]["score"] == pytest.approx(2.25 * 2 / 10)


class Patient(DecisionGroup):
    """A game that waits for anyone who drops out."""

    name = "patient"
    pause_when_disconnected: ClassVar[bool] = True


def test_a_game_may_pause_while_a_member_is_away_and_resume_when_all_are_back() -> None:
    """pause_when_disconnected: a disconnect pauses, the last reconnect resumes and shifts the end."""
    group = Patient(["a", "b"], timing=Timing(10.0))
    group.connect("a", T0)
    group.connect("b", T0)
    paused = group.disconnect("b", T0 + 2)
    assert paused[-1].payload["paused_by"] == PAUSED_BY_DISCONNECT
    assert group.phase is Phase.PAUSED
    group.disconnect("a", T0 + 3)
    assert group.connect("a", T0 + 4) == []  # b is still away
    resumed = group.connect("b", T0 + 6)
    assert resumed[-1].payload["status"] == "running"
    assert group.state.ends_at == T0 + 14


def test_a_reconnect_does_not_resume_an_experimenter_pause() -> None:
    """Only the experimenter resumes what the experimenter paused."""
    group = Patient(["a", "b"], timing=Timing(10.0))
    group.connect("a", T0)
    group.connect("b", T0)
    group.pause(T0 + 1)
    group.disconnect("b", T0 + 2)
    assert group.connect("b", T0 + 3) == []
    assert group.phase is Phase.PAUSED


def test_bundled_games_keep_running_when_a_member_leaves() -> None:
    """bimatrix and public_goods do not pause on a disconnect."""
    group = bimatrix(10.0)
    group.disconnect("col", T0 + 1)
    assert group.phase is Phase.RUNNING
    assert not Bimatrix.pause_when_disconnected and not PublicGoods.pause_when_disconnected
