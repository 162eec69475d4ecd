"""The journal's look at a batch before it takes it (:func:`server.storage.unstorable.storable`)
passes an action's write (the group's state alone) in one expression (issue 21): it refuses
exactly what the look at every value refuses, with the same message, and leaves every other
write to that look."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.storage import ConnectionChange, GroupUpdate, NewEvent, NewResult, NewTick, Write
from server.storage.unstorable import storable

#: the times a database's ``datetime`` holds, and the integers of its integer columns (as unstorable.py has them)
EARLIEST, LATEST = -62135510400.0, 253402128000.0
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def reference_storable(writes: list[Write]) -> None:
    """``storable`` as it was before its shortcut: every value of every write looked at in turn."""
    for write in writes:
        for result in write.results:
            if not math.isfinite(result.score):
                raise ValueError(f"a score the database cannot store: {result.score!r}")
            _integer(result.subperiod, "a result's subperiod")
        group, connection = write.group, write.connection
        if group is None:
            times = []
        else:
            times = [group.started_at, group.ends_at, group.ended_at]
            if type(group.subperiod) is not int or not INT_MIN <= group.subperiod <= INT_MAX:
                _integer(group.subperiod, "the group's subperiod")
        if connection is not None:
            times += (connection.opened, connection.closed)
            _integer(connection.close_code, "a connection's close code")
        for tick in write.ticks:
            times.append(tick.scheduled_at)
            _integer(tick.index, "a tick's index")
        for value in times:
            if value is not None and not EARLIEST <= value <= LATEST:
                raise ValueError(f"a time the database cannot store: {value!r} seconds since the epoch")


def _integer(value: Any, where: str) -> None:
    if type(value) is int and not INT_MIN <= value <= INT_MAX:
        raise ValueError(f"an integer the database cannot store: {value} ({where})")


def refusal(look: Any, writes: list[Write]) -> str | None:
    """What ``look`` says of ``writes``: its ``ValueError``'s message, or ``None`` for none."""
    try:
        look(writes)
    except ValueError as exc:
        return str(exc)
    return None


#: times at and past either end, NaN, infinities and plain ones
times = st.one_of(
    st.none(),
    st.sampled_from([EARLIEST, LATEST, EARLIEST - 1, LATEST + 1, math.nan, math.inf, -math.inf, 1.8e9, 0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
#: integers at and past 64 bits, and values that are no int (a bool, a float: the database says)
integers = st.one_of(
    st.sampled_from([0, 3, INT_MIN, INT_MAX, INT_MIN - 1, INT_MAX + 1, 2**70, True, 1.5, None]),
    st.integers(),
)
groups = st.builds(
    GroupUpdate, st.integers(1, 9), st.just("running"), times, times, times, integers, st.just({}), st.just({}),
)
connections = st.builds(ConnectionChange, st.just("c"), st.just(1), st.just(1), times, times, close_code=integers)
results = st.builds(NewResult, st.just(0), st.just(1), integers, st.just(0.5), st.sampled_from([1.0, math.nan, math.inf]))
ticks = st.builds(NewTick, st.just(1), st.just("subperiod"), integers, times, st.just(1.8e9), st.just(False), st.none())
writes = st.builds(
    Write,
    st.just(1),
    st.just([NewEvent("decisions", 0.5, 1.8e9, 1, 1)]),
    st.none() | groups,
    st.none() | connections,
    st.lists(results, max_size=2),
    st.lists(ticks, max_size=2),
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(writes, min_size=1, max_size=4))
def test_a_batch_is_refused_as_the_look_at_every_value_refuses_it(batch: list[Write]) -> None:
    """Any batch: the same refusal (the first value refused, the same message), or none."""
    assert refusal(storable, batch) == refusal(reference_storable, batch)


@pytest.mark.parametrize(
    ("started", "ends", "ended", "subperiod", "refused"),
    [
        (1.8e9, 1.8e9 + 60, None, 0, None),
        (None, None, None, 2, None),
        (EARLIEST, LATEST, LATEST, INT_MAX, None),
        (1.8e9, 1e15, None, 0, "a time the database cannot store: 1000000000000000.0 seconds since the epoch"),
        (math.nan, 1.8e9, None, 0, "a time the database cannot store: nan seconds since the epoch"),
        (1.8e9, None, math.inf, 0, "a time the database cannot store: inf seconds since the epoch"),
        (1.8e9, None, None, INT_MAX + 1, f"an integer the database cannot store: {INT_MAX + 1} (the group's subperiod)"),
        (math.nan, None, None, INT_MIN - 1, f"an integer the database cannot store: {INT_MIN - 1} (the group's subperiod)"),
        (1.8e9, None, None, 1.5, None),
    ],
)
def test_an_action_s_write_is_passed_or_refused_naming_its_value(
    started: float | None, ends: float | None, ended: float | None, subperiod: Any, refused: str | None
) -> None:
    """The group's state alone (a decision's write): its times and its subperiod, the subperiod first."""
    write = Write(1, [NewEvent("decisions", 0.5, 1.8e9, 1, 1)], GroupUpdate(1, "running", started, ends, ended, subperiod, {}, {}))
    assert refusal(storable, [write]) == refusal(reference_storable, [write]) == refused
