"""A load run's record reduced to its figures (bench/record.py, :meth:`Run.summary`), on records
filled in by hand as the schedule and the peers fill them in a run."""

from __future__ import annotations

import json
import math
from array import array
from types import SimpleNamespace
from typing import cast

import pytest

from bench.load import Load
from bench.record import Peer, Run
from bench.table import table
from bench.verdicts import verdicts


def test_a_send_that_never_left_is_not_counted_delivered() -> None:
    """Of two sends, one left and reached nobody, the other never left: none delivered, one lost, one unsent."""
    run = Run("relay", Load(participants=2, group_size=2, rate=1.0, duration=1.0))
    run.t0 = run.last_send = 1.0
    run.due = array("d", [1.0, 1.5])
    run.sent_at = array("d", [1.0, math.nan])  # the second send's socket refused it
    run.groups = [[0, 1], [0, 1]]
    summary = run.summary()
    assert summary["sent"] == 1 and summary["unsent"] == 1 and summary["lost"] == 1, summary
    assert summary["delivered"] == 0, summary


def a_run_of_three_sends(sent_at: list[float]) -> Run:
    """Three participants in one group, one send each, due 0.1 s apart from 1.0."""
    run = Run("relay", Load(participants=3, group_size=3, rate=1.0, duration=1.0))
    run.t0 = run.last_send = 1.0
    run.due = array("d", [1.0, 1.1, 1.2])
    run.sent_at = array("d", sent_at)
    run.groups = [[0, 1, 2]] * 3
    return run


def test_an_ack_of_a_send_that_never_left_is_no_latency_and_no_nan() -> None:
    """The second send's socket refused it (no time it left), yet an ack names it: the ack
    latencies are the first send's alone, and the JSON has no NaN."""
    run = a_run_of_three_sends([1.0, math.nan, 1.2])
    run.acks = [(0, 1, 1.004), (1, 1, 1.5)]
    summary = run.summary()
    assert summary["ack_latency_ms"] == pytest.approx({"p50": 4.0, "p90": 4.0, "p99": 4.0, "max": 4.0, "n": 1})
    assert summary["acked"] == 1 and summary["unsent"] == 1, summary
    json.dumps(summary, allow_nan=False)  # raises on a NaN
    assert "nan" not in table([{**summary, "name": "run"}]).lower()


def test_a_send_an_error_frame_refused_is_counted_refused_never_as_an_ack_latency() -> None:
    """The third send is refused by an error frame naming its id (and acknowledged all the same,
    as a confused target might): refused, not acked, no latency; an ack repeated for the first
    send counts once, from its first."""
    run = a_run_of_three_sends([1.0, 1.1, 1.2])
    run.acks = [(0, 1, 1.004), (0, 1, 1.5), (1, 1, 1.103), (2, 1, 1.3)]
    run.error({"code": "not_running", "message": "the period is over", "id": "1"}, 2)
    run.error({"code": "rate_limited", "message": "too fast"}, 1)  # no id: no send named
    summary = run.summary()
    assert summary["refused"] == 1 and summary["acked"] == 2, summary
    assert summary["ack_latency_ms"] == pytest.approx({"p50": 3.0, "p90": 4.0, "p99": 4.0, "max": 4.0, "n": 2})
    assert summary["errors"] == {"not_running": 1, "rate_limited": 1}
    assert "1 sends refused" in table([{**summary, "name": "run"}])


def test_a_refused_send_is_not_lost_and_the_verdicts_count_it_apart() -> None:
    """The second of three sends is refused by an error frame naming its id and reaches nobody;
    the others reach all three: nothing lost (the refused one was answered), one refused, and the
    verdicts miss on ``0 refused`` while ``0 lost`` is met. Before, it was counted lost too."""
    run = a_run_of_three_sends([1.0, 1.1, 1.2])
    socket = SimpleNamespace(direct=0, passed=0)
    run.peers = [cast(Peer, SimpleNamespace(receipts=[(0, 1, 1.003), (2, 1, 1.203)], ws=socket)) for _ in range(3)]
    run.acks = [(0, 1, 1.004), (2, 1, 1.204)]
    run.error({"code": "not_persisted", "message": "not stored", "id": "1"}, 1)
    summary = run.summary()
    assert summary["lost"] == 0 and summary["lost_deliveries"] == 0 and summary["refused"] == 1, summary
    assert summary["delivered"] == 2 and summary["deliveries"] == 6, summary
    lines = verdicts([{**summary, "name": "server-2000", "repeat": 1, "unpersisted": 0,
                       "send_lag_ms": {"p99": 1.0}}])
    assert "MET    2,000/s 0 lost: 0" in lines and "MISSED 2,000/s 0 refused: 1" in lines, lines
