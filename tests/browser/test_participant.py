"""The participant page in a real Chromium against a real server: play, reconnect, the clock.

Every test checks that the page raised no JavaScript error, logged no console error (other than
the browser's own report of a refused connection while the network is down) and sent no request
anywhere but to the server that served it. Screenshots of each screen are written to
``artifacts/screenshots/`` (or ``$SYNCLAB_ARTIFACTS``) to be looked at.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from playwright.async_api import Browser, Page, expect
from sqlalchemy import Engine, update

from server.settings import Settings
from server.storage import blocks, participants, sessions
from server.verify import run_verify
from tests.browser.conftest import IN_LOOP, LOOP
from tests.browser.proxy import proxy_to
from tests.server.harness import Harness, timeout, until_state
from tests.server.test_blocks import decide, wait_for_status
from tests.server.test_game_faults import until_faulted

pytestmark = IN_LOOP

WAIT_MS = timeout(10) * 1000
ARTIFACTS = Path(os.environ.get("SYNCLAB_ARTIFACTS") or Path(__file__).resolve().parents[2] / "artifacts") / "screenshots"
LAB_SCREEN = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: how far the skewed browser's clock is ahead of the server's
SKEW_MS = 93_000


@dataclass
class Participant:
    """One participant's browser tab, with what it did wrong."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def check(self, *, network_dropped: bool = False) -> None:
        assert not self.errors, f"the page raised: {self.errors}"
        allowed = re.compile(r"WebSocket connection to .* failed|ERR_CONNECTION|Failed to load resource")
        console = [m for m in self.console_errors if not (network_dropped and allowed.search(m))]
        assert not console, f"the page logged errors: {console}"
        elsewhere = [url for url in self.requests if not url.startswith(self.origin)]
        assert not elsewhere, f"requests left the server: {elsewhere}"

    async def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"participant-{name}.png"), full_page=True)


@pytest_asyncio.fixture(loop_scope=LOOP)
async def open_participant(browser: Browser) -> AsyncIterator[Any]:
    """Open a participant's link in its own browser context (its own storage, as another computer)."""
    opened: list[Participant] = []

    async def open_(url: str, *, skew_ms: int = 0, viewport: dict[str, int] = LAB_SCREEN) -> Participant:
        context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        context.set_default_timeout(WAIT_MS)
        if skew_ms:  # this computer's clock is wrong: the page must go by the server's
            await context.add_init_script(f"{{ const real = Date.now; Date.now = () => real() + {skew_ms}; }}")
        page = await context.new_page()
        origin = re.match(r"https?://[^/]+", url)
        assert origin is not None
        person = Participant(page, origin.group(0))
        page.on("pageerror", lambda exc: person.errors.append(str(exc)))
        page.on("console", lambda msg: person.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("request", lambda request: person.requests.append(request.url))
        await page.goto(url)
        opened.append(person)
        return person

    yield open_
    for person in opened:
        await person.page.context.close()


async def remaining_ms(person: Participant) -> tuple[float, float]:
    """The countdown's remaining ms and the (true) time it was read, in ms since the epoch."""
    before = time.time()
    value = await person.page.locator("#countdown").get_attribute("data-remaining-ms")
    after = time.time()
    assert value is not None, "the countdown shows no time"
    return float(value), (before + after) / 2 * 1000


async def decisions_of(server: Harness, code: str, participant: str) -> list[Any]:
    return [e["value"] for e in await server.events(code) if e["channel"] == "decisions" and e["participant"] == participant]


async def test_two_participants_play_a_bimatrix_experiment_through_the_pages(
    server: Harness, open_participant: Any
) -> None:
    """Waiting, play (slider → the partner's chart), countdown, between blocks, the final total."""
    exp = await server.create(game="bimatrix", participants=2, group_size=2, blocks=2, period_length=6, block_pause=2)
    row_code, col_code = (p["code"] for p in exp["participants"])
    row = await open_participant(exp["participants"][0]["url"])
    await expect(row.page.get_by_role("heading", name="Waiting for your group")).to_be_visible()
    await row.shot("1-waiting")

    col = await open_participant(exp["participants"][1]["url"], skew_ms=SKEW_MS)
    for person in (row, col):
        await expect(person.page.locator("#screen-play")).to_be_visible()
        await expect(person.page.locator("#countdown")).to_have_text(re.compile(r"^0:0[1-6]$"))

    # the countdown agrees with the server's clock, even where the computer's clock is 93 s off
    detail = (await server.http.get(f"/api/experiments/{exp['code']}/participants/{row_code}")).json()
    assert detail["group"] is not None
    ends_at = await row.page.evaluate("window.synclab.page.period.ends_at")
    for person in (row, col):
        await person.page.wait_for_function("window.synclab.socket.clock.uncertainty < 100")
        shown, at = await remaining_ms(person)
        assert abs(shown - (ends_at - at)) <= 250, f"countdown {shown} ms, the server says {ends_at - at:.0f} ms"

    # the row player takes the slider with the keyboard: the column player's chart follows
    slider = row.page.get_by_role("slider", name="Your weight on A")
    await slider.focus()
    await row.page.keyboard.press("End")
    summary = col.page.locator(".chart-summary")
    await expect(summary).to_have_attribute("data-other", "1")
    assert int(await col.page.locator("canvas").first.get_attribute("data-points") or 0) >= 3
    await col.page.get_by_role("slider", name="Your weight on A").focus()
    await col.page.keyboard.press("Home")
    await expect(row.page.locator(".chart-summary")).to_have_text("You 1.00, other player 0.00")
    await expect(row.page.locator("#flow")).to_have_text("0.00")  # A against B: the sucker's payoff
    await expect(col.page.locator("#flow")).to_have_text("5.00")
    await row.shot("2-play-row")
    await col.shot("2-play-col")
    await col.page.set_viewport_size(PHONE)
    await col.shot("2-play-phone")

    # the first block ends: its score is the stored one
    await expect(row.page.locator("#screen-between")).to_be_visible(timeout=WAIT_MS)
    await expect(row.page.get_by_role("heading", name="Block 1 of 2 finished")).to_be_visible()
    sessions = (await server.http.get(f"/api/experiments/{exp['code']}/participants/{col_code}")).json()["sessions"]
    first = next(s for s in sessions if s["block"] == 0)
    await expect(col.page.locator("#between-summary")).to_contain_text(f"{first['final_score']:.2f} points in this block")
    await row.shot("3-between")

    # the second block starts by itself; at its end the final screen shows the total
    await expect(row.page.locator("#screen-play")).to_be_visible(timeout=WAIT_MS)
    await expect(row.page.locator("#block")).to_have_text("Block 2 of 2")
    await expect(row.page.locator("#screen-final")).to_be_visible(timeout=WAIT_MS)
    await expect(col.page.locator("#screen-final")).to_be_visible(timeout=WAIT_MS)
    for person, code in ((row, row_code), (col, col_code)):
        stored = (await server.http.get(f"/api/experiments/{exp['code']}/participants/{code}")).json()
        await expect(person.page.locator("#final-summary")).to_have_text(f"You earned {stored['final_score']:.2f} points in all.")
    await row.shot("4-final")
    assert (await server.http.get(f"/api/experiments/{exp['code']}")).json()["status"] == "done"

    assert await decisions_of(server, exp["code"], row_code) == [1.0]
    assert await decisions_of(server, exp["code"], col_code) == [0.0]
    for person in (row, col):
        person.check()
    assert run_verify(Settings(database_url=server.runtime.settings.database_url), exp["code"]) == 0


async def test_a_dropped_network_reconnects_and_loses_or_repeats_no_decision(
    server: Harness, open_participant: Any
) -> None:
    """A decision made offline is sent after the reconnect; one whose ack was lost is stored once."""
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=60)
    code = exp["code"]
    row_code, col_code = (p["code"] for p in exp["participants"])
    port = int(server.base.rsplit(":", 1)[1])
    async with proxy_to(port) as proxy:
        row = await open_participant(f"{proxy.base}/p/{row_code}")  # only the row player's network breaks
        col = await open_participant(f"{server.base}/p/{col_code}")
        for person in (row, col):
            await expect(person.page.locator("#screen-play")).to_be_visible()
        state = row.page.locator("#connection")
        slider = row.page.get_by_role("slider", name="Your weight on A")
        await slider.focus()

        # 1. the network goes down; the participant moves the slider; the network comes back
        proxy.cut()
        await expect(state).to_have_attribute("data-state", re.compile("closed|connecting"))
        await expect(state).to_contain_text(re.compile("Connection lost|Reconnecting"))
        await row.shot("5-offline")
        await row.page.keyboard.press("End")  # 1.0, made while offline
        await expect(row.page.locator("#game")).to_have_attribute("data-pending", "1")
        await expect(row.page.get_by_text("Your last choice is kept")).to_be_visible()
        await asyncio.sleep(timeout(1.0))
        assert await decisions_of(server, code, row_code) == [], "nothing can have arrived while offline"
        proxy.restore()
        await expect(state).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        await expect(row.page.locator("#game")).to_have_attribute("data-pending", "0")
        await expect(row.page.get_by_text("Your last choice is kept")).to_be_hidden()
        await expect(col.page.locator(".chart-summary")).to_have_attribute("data-other", "1")
        assert await decisions_of(server, code, row_code) == [1.0]

        # 2. a decision reaches the server but its ack is lost; the page sends it again after
        #    the reconnect with the same id, and the server stores it once
        proxy.mute()
        await row.page.keyboard.press("Home")  # 0.0
        await expect(col.page.locator(".chart-summary")).to_have_attribute("data-other", "0")
        assert await decisions_of(server, code, row_code) == [1.0, 0.0]
        await expect(row.page.locator("#game")).to_have_attribute("data-pending", "1")
        proxy.cut()
        await expect(state).not_to_have_attribute("data-state", "open")
        proxy.restore()
        await expect(state).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        await expect(row.page.locator("#game")).to_have_attribute("data-pending", "0")
        await expect(row.page.locator(".chart-summary")).to_have_text("You 0.00, other player 0.50")
        assert await decisions_of(server, code, row_code) == [1.0, 0.0], "the resent decision is stored once"
        points = int(await row.page.locator("canvas").first.get_attribute("data-points") or 0)
        assert points >= 4, f"the chart keeps the period's history across reconnects, has {points} points"
        await expect(row.page.locator("#screen-play")).to_be_visible()
        await row.shot("6-reconnected")

        row.check(network_dropped=True)
        col.check(network_dropped=True)


async def test_public_goods_shows_the_groups_contributions_live(server: Harness, open_participant: Any) -> None:
    """Three members: a contribution moves every member's bars and the group's total."""
    exp = await server.create(game="public_goods", participants=3, group_size=3, period_length=30)
    people = [await open_participant(p["url"]) for p in exp["participants"]]
    for person in people:
        await expect(person.page.locator("#screen-play")).to_be_visible()
    slider = people[0].page.get_by_role("slider", name="Your contribution")
    await slider.focus()
    await people[0].page.keyboard.press("End")  # the whole endowment, 10
    for person in people:
        await expect(person.page.locator(".total")).to_have_attribute("data-sum", "10")
    first = exp["participants"][0]["code"]
    await expect(people[1].page.locator(f'li[data-member="{first}"] .amount')).to_have_text("10")
    await expect(people[0].page.locator("#flow")).to_have_text("5.00")  # 10 - 10 + 0.5 * 10
    await expect(people[1].page.locator("#flow")).to_have_text("15.00")
    await people[1].shot("7-public-goods")

    # the experimenter pauses: the clock stands still on every page, then runs on from there
    assert (await server.http.post(f"/api/experiments/{exp['code']}/pause")).status_code == 200
    watcher = people[2]
    await expect(watcher.page.get_by_text("Paused.")).to_be_visible()
    frozen, _ = await remaining_ms(watcher)
    await asyncio.sleep(timeout(0.6))
    assert (await remaining_ms(watcher))[0] == frozen, "a paused countdown does not move"
    await watcher.shot("7-public-goods-paused")
    await watcher.page.reload()  # a page opened during the pause shows the same frozen time
    await expect(watcher.page.get_by_text("Paused.")).to_be_visible()
    await expect(watcher.page.locator("#countdown")).to_have_attribute("data-remaining-ms", re.compile(r"\d"))
    assert abs((await remaining_ms(watcher))[0] - frozen) <= 250
    assert (await server.http.post(f"/api/experiments/{exp['code']}/resume")).status_code == 200
    await expect(watcher.page.get_by_text("Paused.")).to_be_hidden()
    await asyncio.sleep(timeout(0.5))
    assert (await remaining_ms(watcher))[0] < frozen - 200, "the countdown runs again"

    await people[1].page.set_viewport_size(PHONE)
    await people[1].shot("7-public-goods-phone")
    for person in people:
        person.check()


async def test_an_unknown_link_says_so(server: Harness, open_participant: Any) -> None:
    """An unknown code gets a 404 page that says what to do, and no game page that retries forever."""
    person = await open_participant(f"{server.base}/p/no-such-code")
    await expect(person.page.get_by_role("heading", name="This link is not known")).to_be_visible()
    response = await server.http.get("/p/no-such-code")
    assert response.status_code == 404
    assert (await server.http.get("/p/no-such-code/view.js")).status_code == 404
    person.check(network_dropped=True)  # the 404 itself is the browser's own console error


async def test_the_guides_example_game_is_played_through_its_own_view(server: Harness, open_participant: Any) -> None:
    """examples/stag_hunt.py with its view examples/stag_hunt.js, as the README's guide writes them."""
    exp = await server.create(game="examples.stag_hunt:StagHunt", participants=2, group_size=2, period_length=4)
    view = await server.http.get(f"/p/{exp['participants'][0]['code']}/view.js")
    assert view.status_code == 200 and "Hunt stag" in view.text
    assert view.headers["content-type"].startswith("text/javascript")
    people = [await open_participant(p["url"]) for p in exp["participants"]]
    for person in people:
        await expect(person.page.locator("#screen-play")).to_be_visible()
        await expect(person.page.locator("#flow")).to_have_text("1.00")  # everybody starts on hare
    await people[0].page.get_by_role("button", name=re.compile("Hunt stag")).click()
    await expect(people[0].page.locator("#flow")).to_have_text("0.00")  # a lone stag hunter
    await people[1].page.get_by_role("button", name=re.compile("Hunt stag")).click()
    for person in people:
        await expect(person.page.locator("#flow")).to_have_text("3.00")
        await expect(person.page.get_by_role("button", name=re.compile("Hunt stag"))).to_have_attribute("aria-pressed", "true")
    await people[0].shot("8-example-stag-hunt")
    for person, p in zip(people, exp["participants"], strict=True):
        await expect(person.page.locator("#screen-final")).to_be_visible(timeout=WAIT_MS)
        stored = (await server.http.get(f"/api/experiments/{exp['code']}/participants/{p['code']}")).json()
        await expect(person.page.locator("#final-summary")).to_have_text(f"You earned {stored['final_score']:.2f} points in all.")
        person.check()
    assert run_verify(Settings(database_url=server.runtime.settings.database_url), exp["code"]) == 0


async def test_the_min_effort_example_is_played_through_its_own_view(server: Harness, open_participant: Any) -> None:
    """examples/min_effort.py with its view examples/min_effort.js: a flow payoff of a*min - b*own."""
    exp = await server.create(game="examples.min_effort:MinEffort", participants=2, group_size=2, period_length=4)
    people = [await open_participant(p["url"]) for p in exp["participants"]]
    for person in people:
        await expect(person.page.locator("#screen-play")).to_be_visible()
        await expect(person.page.locator("#flow")).to_have_text("7.00")  # 2*7 - 7: both start at 7
    await people[0].page.get_by_role("button", name="3", exact=True).click()
    await expect(people[0].page.locator("#flow")).to_have_text("3.00")  # 2*3 - 3
    await expect(people[1].page.locator("#flow")).to_have_text("-1.00")  # 2*3 - 7
    await expect(people[1].page.locator(".minimum")).to_have_text("Lowest effort: 3")
    await expect(people[0].page.get_by_role("button", name="3", exact=True)).to_have_attribute("aria-pressed", "true")
    await people[1].shot("8-example-min-effort")
    for person, p in zip(people, exp["participants"], strict=True):
        await expect(person.page.locator("#screen-final")).to_be_visible(timeout=WAIT_MS)
        stored = (await server.http.get(f"/api/experiments/{exp['code']}/participants/{p['code']}")).json()
        await expect(person.page.locator("#final-summary")).to_have_text(f"You earned {stored['final_score']:.2f} points in all.")
        person.check()
    assert run_verify(Settings(database_url=server.runtime.settings.database_url), exp["code"]) == 0


async def test_a_frame_over_the_sockets_mebibyte_is_refused_on_the_page_and_play_goes_on(
    server: Harness, open_participant: Any
) -> None:
    """A frame the server's socket would close on (over 1 MiB, close code 1009) is refused by the
    client as the server refuses frames over its own limit: an ``error`` frame of code
    ``too_large``, shown on the page; the socket stays open, nothing is kept to be resent, and the
    next decision is stored."""
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=30)
    row, col = [await open_participant(p["url"]) for p in exp["participants"]]
    await expect(row.page.locator("#screen-play")).to_be_visible()
    sent = await row.page.evaluate(
        "window.synclab.socket.send('decisions', 'x'.repeat(1100000), {retry: true})"
    )
    assert sent is False
    await expect(row.page.locator("#notice")).to_contain_text("over 1048576 bytes")
    assert await row.page.evaluate("window.synclab.socket.state") == "open"
    assert await row.page.evaluate("window.synclab.socket.pending.length") == 0
    slider = row.page.get_by_role("slider", name="Your weight on A")
    await slider.focus()
    await row.page.keyboard.press("End")
    row_code = exp["participants"][0]["code"]

    for _ in range(100):  # the decision is stored within 10 s
        if 1.0 in await decisions_of(server, exp["code"], row_code):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the decision after the refused frame was not stored")
    closes = await row.page.evaluate("window.synclab.socket.attempt")
    assert closes == 0, "the socket was closed and opened again"
    for person in (row, col):
        person.check()


async def stored_results(server: Harness, code: str, participant: str) -> list[float]:
    """The scores of the participant's stored results, through the API."""
    response = await server.http.get(f"/api/experiments/{code}/results", params={"page_size": 1000})
    assert response.status_code == 200, response.text
    return [r["score"] for r in response.json()["results"] if r["participant"] == participant]


async def test_earned_in_a_block_of_subperiods_is_the_sum_of_its_stored_results_on_a_page_open_before_the_start(
    server: Harness, open_participant: Any
) -> None:
    """Pages open while the group waited show as "Earned this block" the sum of the stored results
    (scored every 2 s), read a second away from each subperiod's end: not the flow payoff accrued
    as in continuous time besides; during a pause too, and after it."""
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=8, num_subperiods=4)
    code, codes = exp["code"], [p["code"] for p in exp["participants"]]
    row = await open_participant(exp["participants"][0]["url"])
    await expect(row.page.get_by_role("heading", name="Waiting for your group")).to_be_visible()
    col = await open_participant(exp["participants"][1]["url"])
    people = list(zip((row, col), codes, strict=True))
    for person, _ in people:
        await expect(person.page.locator("#screen-play")).to_be_visible()
    await row.page.get_by_role("slider", name="Your weight on A").focus()
    await row.page.keyboard.press("End")  # A against a mix: 1.50 for the row, 3.50 for the column
    started = await row.page.evaluate("window.synclab.page.period.started_at")

    async def shows_the_stored_sum(results: int) -> None:
        for person, participant in people:
            scores = await stored_results(server, code, participant)
            assert len(scores) == results
            shown = await person.page.locator("#earned").text_content()
            # shown to two decimals (JavaScript rounds a half up, Python to even)
            assert abs(float(shown or "nan") - sum(scores)) <= 0.005 + 1e-9, f"earned {shown}, the results add up to {sum(scores)}"

    async def until(ms: float) -> None:
        await row.page.wait_for_function(f"window.synclab.socket.serverNow() >= {ms}", timeout=timeout(15) * 1000)

    await until(started + 3000)
    await shows_the_stored_sum(1)
    await until(started + 5000)
    await shows_the_stored_sum(2)
    assert (await server.http.post(f"/api/experiments/{code}/pause")).status_code == 200
    await expect(row.page.get_by_text("Paused.")).to_be_visible()
    await asyncio.sleep(timeout(0.8))
    await shows_the_stored_sum(2)
    assert (await server.http.post(f"/api/experiments/{code}/resume")).status_code == 200
    await expect(row.page.get_by_text("Paused.")).to_be_hidden()
    ends_at = await row.page.evaluate("window.synclab.page.period.ends_at")  # moved by the pause
    await until(ends_at - 1000)  # the third subperiod has ended, the last not yet
    await shows_the_stored_sum(3)
    for person, participant in people:
        await expect(person.page.locator("#screen-final")).to_be_visible(timeout=timeout(10) * 1000)
        stored = (await server.http.get(f"/api/experiments/{code}/participants/{participant}")).json()
        await expect(person.page.locator("#final-summary")).to_have_text(f"You earned {stored['final_score']:.2f} points in all.")
        person.check()


async def test_a_block_ended_without_its_game_shows_its_stored_score_in_the_later_blocks_and_the_total(
    server: Harness, open_participant: Any
) -> None:
    """Block 1 of 2: subperiod 0 scored (2.50 each), the other member's 7 breaks Fragile's payoff,
    the experimenter ends the group (without the game: unfinished); block 2 is ended too. The
    final screen shows block 1 at its stored score, bonus and results (3.50), and the stored
    total. It showed no score for block 1 and left it out of the total, which the page's own
    "Earned" had counted."""
    exp = await server.create(game="tests.server.test_blocks:Fragile", participants=2, group_size=2, blocks=2,
                              period_length=8, num_subperiods=4, bonus_points=1, block_pause=0.3)
    code, (mine, other) = exp["code"], [p["code"] for p in exp["participants"]]
    person = await open_participant(exp["participants"][0]["url"])
    breaker = await server.connect(other)
    group = (await breaker.expect("hello"))["payload"]["group"]
    await until_state(breaker, "period_start")
    # subperiods of 2 s: the 7 must come within subperiod 1 (with 0.5 s ones, a start 0.6 s late
    # on a loaded machine scored subperiod 1 before it came, and "Earned" read 5.00)
    await breaker.expect("subperiod", wait=10)  # subperiod 0 scored at 2 s
    await decide(breaker, 7, "seven")
    await expect(person.page.locator("#earned")).to_have_text("2.50")
    await until_faulted(server, code, wait=10)  # subperiod 1, due at 4 s, fails on the 7
    assert (await server.http.post(f"/api/experiments/{code}/end", params={"group": group})).status_code == 200
    await expect(person.page.locator("#block")).to_have_text("Block 2 of 2", timeout=WAIT_MS)
    await expect(person.page.locator("#screen-play")).to_be_visible(timeout=WAIT_MS)
    assert (await server.http.post(f"/api/experiments/{code}/end")).status_code == 200

    await expect(person.page.locator("#screen-final")).to_be_visible(timeout=WAIT_MS)
    stored = (await server.http.get(f"/api/experiments/{code}/participants/{mine}")).json()
    first = stored["sessions"][0]
    assert (first["block"], first["final_score"], first["finished_at"]) == (0, 3.5, None)
    shown = [await cell.text_content() for cell in await person.page.locator("#screen-final tbody td").all()]
    assert shown == [f"{s['final_score']:.2f}" for s in stored["sessions"]]
    await expect(person.page.locator("#final-summary")).to_have_text(f"You earned {stored['final_score']:.2f} points in all.")
    person.check()


async def test_ending_mid_experiment_shows_the_final_screen_at_once_on_every_open_page(
    server: Harness, open_participant: Any
) -> None:
    """``end`` in block 1 of 2: the open pages of a group playing and of a group still waiting
    show the final screen with the stored total within seconds (the pause before block 2 is a
    minute), without a reload."""
    exp = await server.create(game="bimatrix", participants=4, group_size=2, blocks=2, period_length=60, block_pause=60)
    code = exp["code"]
    people = [await open_participant(p["url"]) for p in exp["participants"][:3]]
    for person in people[:2]:
        await expect(person.page.locator("#screen-play")).to_be_visible()
    await expect(people[2].page.get_by_role("heading", name="Waiting for your group")).to_be_visible()
    opened = [await person.page.evaluate("performance.timeOrigin") for person in people]

    assert (await server.http.post(f"/api/experiments/{code}/end")).status_code == 200
    for person, participant in zip(people, exp["participants"], strict=False):
        await expect(person.page.locator("#screen-final")).to_be_visible(timeout=timeout(3) * 1000)
        stored = (await server.http.get(f"/api/experiments/{code}/participants/{participant['code']}")).json()
        await expect(person.page.locator("#final-summary")).to_have_text(f"You earned {stored['final_score']:.2f} points in all.")
        await expect(person.page.locator("#connection")).to_have_text("Done")
    await people[0].shot("8-ended-by-the-experimenter")
    assert [await person.page.evaluate("performance.timeOrigin") for person in people] == opened, "a page reloaded"
    assert (await server.http.get(f"/api/experiments/{code}")).json()["status"] == "cancelled"
    for person in people:
        person.check()


async def test_a_block_score_past_a_floats_range_shows_not_available_and_the_total_says_it_is_incomplete(
    server: Harness, open_participant: Any
) -> None:
    """Two blocks played; block 1's stored score is null (no finite number: past a float's range, as
    the server stores it). The final screen shows "—" for block 1, block 2's score, and the total of
    the others saying it leaves block 1 out. The page counted the null as 0, silently."""
    exp = await server.create(game="bimatrix", participants=2, group_size=2, blocks=2, period_length=0.6,
                              num_subperiods=2, bonus_points=1, block_pause=0.2)
    code, mine = exp["code"], exp["participants"][0]["code"]
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    for _ in range(2):
        await until_state(clients[0], "period_start")
        await until_state(clients[0], "period_end")
    await wait_for_status(server, code, "done")

    def past_a_floats_range(engine: Engine) -> None:
        with engine.begin() as conn:
            person = participants.c.code == mine
            first = blocks.c.index == 0
            conn.execute(
                update(sessions)
                .where(sessions.c.participant_id == participants.c.id, person)
                .where(sessions.c.block_id == blocks.c.id, first)
                .values(final_score=None)
            )

    await server.runtime.database.write(past_a_floats_range)
    stored = (await server.http.get(f"/api/experiments/{code}/participants/{mine}")).json()
    scores = {s["block"]: s["final_score"] for s in stored["sessions"]}
    assert scores[0] is None and isinstance(scores[1], float), scores

    person = await open_participant(exp["participants"][0]["url"])
    await expect(person.page.locator("#screen-final")).to_be_visible(timeout=WAIT_MS)
    summary = person.page.locator("#final-summary")  # once the stored scores are read (the screen may come first)
    await expect(summary).to_have_text(
        f"You earned {scores[1]:.2f} points in all (incomplete: not counting block 1: its score is not available)."
    )
    await expect(person.page.locator("#screen-final tbody td")).to_have_text(["—", f"{scores[1]:.2f}"])
    assert await summary.get_attribute("data-incomplete") == "true"
    await person.shot("9-a-score-not-available")
    person.check()
