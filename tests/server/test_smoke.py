"""The first thing a lab does: create an experiment and play one decision."""

from __future__ import annotations

from tests.server.harness import Harness


async def test_a_decision_reaches_the_whole_group_after_it_is_stored(any_server: Harness) -> None:
    """Two participants connect, the period starts, a decision is stored then broadcast."""
    exp = await any_server.create()
    a_code, b_code = (p["code"] for p in exp["participants"])
    a = await any_server.connect(a_code)
    hello = await a.expect("hello")
    assert hello["payload"]["phase"] == "waiting"
    b = await any_server.connect(b_code)
    for client in (a, b):
        assert (await client.expect("state"))["payload"] == "period_start"
    await a.send("decisions", 1, frame_id="d1")
    for client in (a, b):
        frame = await client.expect("group_decisions")
        while frame["payload"][a_code] != 1:
            frame = await client.expect("group_decisions")
        assert frame["payload"] == {a_code: 1.0, b_code: 0.5}
    ack = await a.expect("ack")
    stored = await any_server.events(exp["code"])
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert any(e["seq"] == ack["payload"]["seq"] and e["channel"] == "decisions" for e in stored)
