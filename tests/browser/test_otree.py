"""oTree -> synclab -> oTree in a real Chromium, against a real oTree 6: oTree's page shows the score synclab stored.

Two participants of an oTree session start on oTree's ``Play`` page (``tests/otree_project``),
which sends each to the experiment's shared join link with their oTree participant code as the
label. They play one short bimatrix period together; synclab's final screen sends them back to
oTree's ``/InitializeParticipant/{code}`` (through ``/p/{code}/done``), where the ``Results`` page
shows ``participant.vars``, posted by synclab to oTree's REST API. It needs the shared join link,
the final screen's way back (``server.join``) and the deliveries (``server.deliveries``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, expect
from sqlalchemy import select, update

from server.storage import add_otree_deliveries, make_engine, participants, sessions
from tests.browser.conftest import IN_LOOP
from tests.otree_server import REST_KEY, OTree, free_port, running_otree
from tests.server.harness import TOKEN, running_server, timeout, until_state

pytestmark = IN_LOOP

FAST = {"delivery_retry": 0.2, "delivery_retry_max": 1.0, "delivery_poll": 0.2, "delivery_timeout": 2.0}


async def _through_synclab(page: Page, otree: OTree, start: str, synclab: str, errors: list[str]) -> None:
    """From oTree's first page to synclab, through the game, and back to oTree's ``Results`` page."""
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(start)
    await page.wait_for_url("**/synclab_round_trip/Play/**")
    await page.click("#play")
    await page.wait_for_url(f"{synclab}/p/**")
    deadline = time.monotonic() + timeout(40)
    while time.monotonic() < deadline:
        if page.url.startswith(otree.base) and "/synclab_round_trip/Results/" in page.url:
            return
        done = page.locator("a[href$='/done']")
        if page.url.startswith(synclab) and await done.count() and await done.first.is_visible():
            await done.first.click()  # the final screen's button (it also goes by itself after a while)
        await asyncio.sleep(0.25)
    raise AssertionError(f"never came back to oTree's results page: at {page.url}")


async def test_a_participant_goes_from_otree_to_synclab_and_back_with_the_score(tmp_path: Path, sqlite_url: str, browser: Browser) -> None:
    """Both members land on oTree's Results page, which shows the score synclab stored for them."""
    with running_otree(tmp_path) as otree:
        async with running_server(sqlite_url, **FAST) as server:
            exp = await server.create(
                participants=2, group_size=2, period_length=1, num_subperiods=2,
                online={"otree_url": otree.base, "otree_rest_key": REST_KEY, "lobby_timeout": 60},
            )
            join = f"{server.base}/join/{exp['code']}"
            session = await asyncio.to_thread(otree.create_session, 2, synclab_join_url=join)
            people = await asyncio.to_thread(otree.participants, session)
            contexts = [await browser.new_context() for _ in people]
            pages = [await c.new_page() for c in contexts]
            for page in pages:
                page.set_default_timeout(timeout(20) * 1000)
            errors: list[str] = []
            try:
                await asyncio.gather(*(
                    _through_synclab(page, otree, f"{otree.base}/InitializeParticipant/{p['code']}", server.base, errors)
                    for page, p in zip(pages, people, strict=True)
                ))
                shown: dict[str, dict[str, Any]] = {}
                for page, p in zip(pages, people, strict=True):
                    # the page looks again every second until the score has landed
                    await page.locator("#score").wait_for(timeout=timeout(20) * 1000)
                    shown[p["code"]] = {
                        "score": float(await page.locator("#score").inner_text()),
                        "status": await page.locator("#status").inner_text(),
                        "completion_code": await page.locator("#completion-code").inner_text(),
                    }
            finally:
                for context in contexts:
                    await context.close()
            deliveries = (await server.http.get(f"/api/experiments/{exp['code']}/deliveries")).json()["results"]
            progress = (await server.http.get(f"/api/experiments/{exp['code']}/participants")).json()["results"]
        stored = {p["code"]: p for p in await asyncio.to_thread(otree.participants, session, "synclab_score")}
    assert not errors, f"the pages raised: {errors}"
    score_of = {p["code"]: p["final_score"] for p in progress}
    by_label = {d["label"]: d for d in deliveries}
    assert sorted(by_label) == sorted(p["code"] for p in people)  # each arrived with their oTree code
    for code, seen in shown.items():
        synclab_code = by_label[code]["participant"]
        assert by_label[code]["status"] == "delivered"
        assert seen["score"] == score_of[synclab_code]  # the float as synclab stored it (str() round-trips)
        assert stored[code]["synclab_score"] == score_of[synclab_code]
        assert seen["status"] == by_label[code]["payload"]["synclab_status"]
        assert seen["completion_code"] == str(by_label[code]["payload"]["synclab_completion_code"])


async def test_the_monitor_shows_the_scores_otree_has_not_taken(sqlite_url: str, page: Page) -> None:
    """oTree's address answers nothing: the monitor's panel lists both deliveries as failing, with the error."""
    nobody = f"http://127.0.0.1:{free_port()}"
    async with running_server(sqlite_url, **FAST) as server:
        exp = await server.create(participants=2, group_size=2, period_length=0.5,
                                  online={"otree_url": nobody, "otree_rest_key": REST_KEY})
        engine = make_engine(sqlite_url)
        try:
            with engine.begin() as conn:  # as the shared join link seats them: with their oTree codes
                for n, person in enumerate(exp["participants"]):
                    conn.execute(update(participants).where(participants.c.code == person["code"])
                                 .values(join_label=f"otree{n}"))
        finally:
            engine.dispose()
        row, _ = [await server.connect(p["code"]) for p in exp["participants"]]
        await until_state(row, "period_end")
        await page.goto(f"{server.base}/monitor?token={TOKEN}&experiment={exp['code']}")
        await expect(page.locator("#x-deliveries-section")).to_be_visible(timeout=timeout(10) * 1000)
        failing = page.locator("#x-deliveries tbody tr[data-status='failing']")
        await expect(failing).to_have_count(2, timeout=timeout(10) * 1000)
        await expect(failing.first).to_contain_text("ConnectError")
        await expect(page.locator("#x-deliveries-summary")).to_contain_text("2 failing")
        assert REST_KEY not in await page.content()


async def test_the_monitor_shows_a_refused_score_first_with_its_reason(sqlite_url: str, page: Page) -> None:
    """A participant's scores summing past a float's range: their delivery is stored refused
    (``add_otree_deliveries``, as the run's end stores it); the panel lists it first, marked
    ``refused`` with the reason, and its summary counts it."""
    nobody = f"http://127.0.0.1:{free_port()}"
    async with running_server(sqlite_url, **FAST) as server:
        exp = await server.create(participants=2, group_size=2, blocks=2,
                                  online={"otree_url": nobody, "otree_rest_key": REST_KEY})
        engine = make_engine(sqlite_url)
        try:
            with engine.begin() as conn:
                ids = []
                for n, person in enumerate(exp["participants"]):
                    conn.execute(update(participants).where(participants.c.code == person["code"])
                                 .values(join_label=f"otree{n}"))
                    ids.append(conn.execute(select(participants.c.id, participants.c.experiment_id)
                                            .where(participants.c.code == person["code"])).one())
                conn.execute(update(sessions).where(sessions.c.participant_id == ids[1][0]).values(final_score=1e308))
            assert add_otree_deliveries(engine, ids[0][1], [i for i, _ in ids], time.time()) == 2
        finally:
            engine.dispose()
        await page.goto(f"{server.base}/monitor?token={TOKEN}&experiment={exp['code']}")
        await expect(page.locator("#x-deliveries-section")).to_be_visible(timeout=timeout(10) * 1000)
        first = page.locator("#x-deliveries tbody tr").first
        await expect(first).to_have_attribute("data-status", "refused", timeout=timeout(10) * 1000)
        await expect(first).to_contain_text("otree1")
        await expect(first).to_contain_text("not a finite number")
        await expect(page.locator("#x-deliveries-summary")).to_contain_text("1 refused (never posted)")
