"""The period on a real clock: subperiod ticks land on schedule and end the period."""

from __future__ import annotations

import asyncio

from tests.server.harness import Harness, timeout


async def test_three_subperiods_of_a_three_second_period_land_within_50_ms(server: Harness) -> None:
    """Ticks come at start + 1 s, + 2 s, + 3 s (±50 ms), the last before period_end."""
    exp = await server.create(participants=2, group_size=2, period_length=3, num_subperiods=3)
    a, b = [await server.connect(p["code"]) for p in exp["participants"]]
    start = await a.expect("state")
    assert start["payload"] == "period_start"
    ticks = []
    async with asyncio.timeout(timeout(8)):
        while True:
            frame = await a.next(wait=5)
            if frame["channel"] == "subperiod":
                ticks.append(frame)
            if frame["channel"] == "state":
                end = frame
                break
    assert [t["payload"]["index"] for t in ticks] == [0, 1, 2]
    for k, tick in enumerate(ticks, start=1):
        assert abs(tick["ts"] - (start["ts"] + 1000 * k)) <= 50, (k, tick["ts"] - start["ts"])
    assert end["payload"] == "period_end" and end["seq"] > ticks[-1]["seq"]
    # the other member saw the same ticks, and a reconnect is told the subperiod count
    assert [t["seq"] for t in ticks] == [(await b.expect("subperiod"))["seq"] for _ in range(3)]
    again = await server.connect(exp["participants"][0]["code"])
    hello = (await again.expect("hello"))["payload"]
    assert hello["phase"] == "ended"
    assert hello["period"]["subperiod"] == 3 and hello["period"]["num_subperiods"] == 3
