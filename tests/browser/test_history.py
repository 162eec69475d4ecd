"""Charts of a page opened in the middle of a period start at the period's start (issue 20).

The monitor opened mid-period, and a participant's page reloaded mid-period, read the group's
stored decisions since its ``period_start`` (``GET /api/experiments/{code}/groups/{id}/history``
and ``GET /p/{code}/history``) and draw them before what comes live.
"""

from __future__ import annotations

import asyncio

from playwright.async_api import Page, Route, expect

from tests.browser.conftest import IN_LOOP
from tests.server.harness import TOKEN, Client, Harness, timeout

pytestmark = IN_LOOP

WAIT_MS = timeout(10) * 1000
STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


async def _played(server: Harness, client: Client) -> None:
    """The member behind ``client`` changes its decision six times, each stored."""
    for n, value in enumerate(STEPS):
        await client.send("decisions", value, f"h{n}")
        while (await client.expect("ack"))["payload"]["id"] != f"h{n}":
            pass


async def test_a_monitor_opened_mid_period_draws_the_period_from_its_start(server: Harness, page: Page) -> None:
    exp = await server.create(period_length=30)
    codes = [p["code"] for p in exp["participants"]]
    clients = [await server.connect(code) for code in codes]
    for client in clients:
        await client.expect("state")
    await _played(server, clients[1])
    await page.goto(f"{server.base}/monitor?token={TOKEN}&experiment={exp['code']}")
    group = page.locator("article.group").first
    await expect(group).to_have_attribute("data-phase", "running", timeout=WAIT_MS)
    canvas = group.locator("canvas")
    # both members' 0.5 at the start, then one point per change of the other: not just the two of now
    await expect(canvas).to_have_attribute("data-points", str(2 + len(STEPS)), timeout=WAIT_MS)
    await clients[0].send("decisions", 1.0, "live")
    await expect(canvas).to_have_attribute("data-points", str(3 + len(STEPS)), timeout=WAIT_MS)


async def test_a_monitor_opened_after_the_period_ended_draws_the_whole_period(server: Harness, page: Page) -> None:
    """An experimenter looking back at a finished group saw an empty chart: only a group
    running or paused had its history read."""
    exp = await server.create(period_length=2)
    codes = [p["code"] for p in exp["participants"]]
    clients = [await server.connect(code) for code in codes]
    for client in clients:
        await client.expect("state")
    await _played(server, clients[1])
    for client in clients:  # period_start came; period_end is the next state
        assert (await client.expect("state", wait=10))["payload"] == "period_end"
    await page.goto(f"{server.base}/monitor?token={TOKEN}&experiment={exp['code']}")
    group = page.locator("article.group").first
    await expect(group).to_have_attribute("data-phase", "ended", timeout=WAIT_MS)
    # both members' 0.5 at the start, then one point per change of the other
    await expect(group.locator("canvas")).to_have_attribute("data-points", str(2 + len(STEPS)), timeout=WAIT_MS)


async def test_a_participant_page_reloaded_mid_period_draws_the_period_from_its_start(
    server: Harness, page: Page
) -> None:
    exp = await server.create(period_length=30)
    me, other = (p["code"] for p in exp["participants"])
    await page.goto(exp["participants"][0]["url"])
    partner = await server.connect(other)
    await expect(page.locator("#screen-play")).to_be_visible(timeout=WAIT_MS)
    await partner.expect("state")
    await _played(server, partner)
    # a point per change of the partner, and the start (how many at the start depends on whether
    # the page was there before the period began): not just the two of the moment of the reload
    enough = f"Number(document.querySelector('canvas[aria-label=\"Decisions over the period\"]')?.dataset.points) >= {1 + len(STEPS)}"
    await page.wait_for_function(enough, timeout=WAIT_MS)
    await page.reload()
    await expect(page.locator("#screen-play")).to_be_visible(timeout=WAIT_MS)
    await page.wait_for_function(enough, timeout=WAIT_MS)
    history = (await server.http.get(f"/p/{me}/history")).json()
    assert [p["decisions"][other] for p in history["points"]] == [0.5, *STEPS]


async def test_changes_that_come_while_the_games_view_loads_are_drawn_once_it_is_there(
    server: Harness, page: Page
) -> None:
    """The page gets hello, then its game's view module takes its time: the period starts and the
    partner changes six times meanwhile; each change is on the chart once the view is there."""
    exp = await server.create(period_length=30)
    other = exp["participants"][1]["code"]
    requested, release = asyncio.Event(), asyncio.Event()

    async def slow_view(route: Route) -> None:
        requested.set()
        await release.wait()
        await route.continue_()

    await page.route("**/view.js", slow_view)
    await page.goto(exp["participants"][0]["url"])
    await asyncio.wait_for(requested.wait(), timeout(10))  # hello is in: the view is on its way
    partner = await server.connect(other)
    await partner.expect("state")
    await _played(server, partner)
    release.set()
    canvas = page.locator('canvas[aria-label="Decisions over the period"]')
    # the start (both at 0.5), then the partner's six changes: not only where they stand now
    await expect(canvas).to_have_attribute("data-points", str(2 + len(STEPS)), timeout=WAIT_MS)
