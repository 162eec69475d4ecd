"""The monitor page in a real Chromium against a real server, with real participant sockets."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Locator, Page, Route, expect

from server import monitor
from server.storage import add_token, revoke_token
from tests.browser.conftest import IN_LOOP
from tests.server.harness import TOKEN, Harness, timeout, until_state
from tests.server.test_blocks import decide, wait_for_status

pytestmark = IN_LOOP

TOKEN_KEY = "synclab.monitor.token"
WAIT_MS = timeout(10) * 1000


async def points(page: Page, group: int) -> int:
    """How many decision points the group's chart has drawn (its ``data-points``)."""
    value = await page.locator(f'article[data-group="{group}"] canvas').get_attribute("data-points")
    return int(value or 0)


async def test_monitor_creates_an_experiment_and_follows_it_live(server: Harness, page: Page) -> None:
    """Create from the form, show links and QR codes, follow connections, decisions and a pause."""
    await page.goto(f"{server.base}/monitor#token={TOKEN}")
    await expect(page.locator("#f-game option[value=bimatrix]")).to_be_attached(timeout=WAIT_MS)
    assert "token" not in page.url, "the token stays out of the address bar"
    assert await page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") == TOKEN

    await page.get_by_label("Game", exact=True).select_option("bimatrix")
    assert '"payoffs"' in await page.get_by_label("Config (JSON", exact=False).input_value()
    await page.get_by_role("spinbutton", name="Participants").fill("2")
    await page.get_by_role("spinbutton", name="Period length (s)").fill("30")
    await page.get_by_role("button", name="Create experiment").click()
    await page.wait_for_url(re.compile(r"\?experiment=[A-Za-z0-9_-]+"), timeout=WAIT_MS)
    code = page.url.rsplit("=", 1)[1]
    detail = (await server.http.get(f"/api/experiments/{code}")).json()
    assert detail["game"] == "bimatrix"
    assert detail["num_participants"] == 2

    people = detail["participants"]
    for person in people:
        await expect(page.get_by_role("link", name=person["url"])).to_be_visible()
        qr = page.get_by_role("img", name=f"QR code of the link of {person['label']}")
        await expect(qr).to_be_visible()
        modules = int(await qr.get_attribute("data-modules") or 0)
        assert modules >= 21 and (modules - 17) % 4 == 0, f"a QR code has 4·version+17 modules, got {modules}"
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)

    clients = [await server.connect(person["code"]) for person in people]
    for client in clients:
        assert (await client.expect("state"))["payload"] == "period_start"
    for person in people:
        row = page.locator(f'tr[data-participant="{person["code"]}"]')
        await expect(row).to_have_attribute("data-connected", "true", timeout=WAIT_MS)
        await expect(row.locator(".connection")).to_contain_text("connected since")

    group = page.locator("article.group").first
    await expect(group).to_have_attribute("data-phase", "running", timeout=WAIT_MS)
    group_id = int(await group.get_attribute("data-group") or 0)
    countdown = group.locator(".countdown")
    await expect(countdown).to_have_text(re.compile(r"^0:[0-3]\d left$"))
    remaining = int(await countdown.get_attribute("data-remaining-ms") or -1)
    assert 0 < remaining <= 30_000, remaining

    before = await points(page, group_id)
    await clients[0].send("decisions", 0.9, "a")
    await clients[1].send("decisions", 0.1, "b")
    for client in clients:
        await client.expect("ack")
    first, second = (p["label"] for p in people)
    summary = group.locator(".chart-summary")
    await expect(summary).to_have_text(f"Decisions: {first} 0.90, {second} 0.10", timeout=WAIT_MS)
    assert await points(page, group_id) >= before + 2, "each new decision is a point on the chart"
    await expect(page.locator("#stat-rate")).to_have_text(re.compile(r"^\d+\.\d$"), timeout=WAIT_MS)
    await expect(page.locator("#stat-latency")).to_have_text(re.compile(r"^\d+\.\d / "), timeout=WAIT_MS)

    await page.get_by_role("group", name="Experiment controls").get_by_role("button", name="Pause").click()
    await expect(page.locator("#control-result")).to_have_text(re.compile(rf"^pause: group {group_id}; "))
    await expect(group).to_have_attribute("data-phase", "paused", timeout=WAIT_MS)
    await expect(countdown).to_have_text(re.compile(r"left \(paused\)$"))
    for client in clients:
        assert (await client.expect("period"))["payload"]["status"] == "paused"

    await group.get_by_role("button", name="resume").click()
    await expect(group).to_have_attribute("data-phase", "running", timeout=WAIT_MS)
    for client in clients:
        assert (await client.expect("period"))["payload"]["status"] == "running"

    async with page.expect_download(timeout=WAIT_MS) as downloading:
        await page.get_by_role("button", name="events.csv").click()
    saved = Path(await (await downloading.value).path())
    lines = (await asyncio.to_thread(saved.read_text)).splitlines()
    assert "seq" in lines[0] and "channel" in lines[0], lines[0]
    assert sum("decisions" in line for line in lines) >= 2


async def test_monitor_with_a_wrong_token_shows_the_error_and_asks_again(server: Harness, page: Page) -> None:
    """A refused token is said plainly, forgotten, and the token form comes back."""
    await page.goto(f"{server.base}/monitor#token=not-the-token")
    error = page.get_by_role("alert")
    await expect(error).to_contain_text("403", timeout=WAIT_MS)
    await expect(error).to_contain_text("token is not known")
    await expect(page.get_by_label("Experimenter token")).to_be_visible()
    assert await page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None

    await page.get_by_label("Experimenter token").fill(TOKEN)
    await page.get_by_role("button", name="Use token").click()
    await expect(page.get_by_role("heading", name="Experiments")).to_be_visible()
    await expect(page.locator("#page-info")).to_have_text(re.compile(r"\(0 experiments\)"), timeout=WAIT_MS)
    await expect(error).to_be_hidden()


async def test_monitor_names_the_field_the_server_refused(server: Harness, page: Page) -> None:
    """A 400 from POST /api/experiments shows its message and marks the field it names."""
    await page.goto(f"{server.base}/monitor#token={TOKEN}")
    await expect(page.locator("#f-game option[value=bimatrix]")).to_be_attached(timeout=WAIT_MS)
    await page.get_by_role("spinbutton", name="Participants").fill("3")
    await page.get_by_role("button", name="Create experiment").click()
    await expect(page.get_by_role("alert")).to_contain_text("expected a multiple of group_size", timeout=WAIT_MS)
    await expect(page.get_by_role("spinbutton", name="Participants")).to_have_attribute("aria-invalid", "true")
    assert "experiment=" not in page.url


async def cut_off_for_falling_behind(
    server: Harness, page: Page, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], list[Any], Locator, Locator]:
    """A monitor open on a running experiment, closed 4008 for falling behind (the first member's
    decision 0.8 one write too many): the experiment, its members' clients, the page's live state
    and its first group."""
    exp = await server.create(period_length=60)
    await page.goto(f"{server.base}/monitor?experiment={exp['code']}#token={TOKEN}")
    live = page.locator("#live-state")
    await expect(live).to_have_attribute("data-snapshots", "1", timeout=WAIT_MS)
    clients = [await server.connect(person["code"]) for person in exp["participants"]]
    group = page.locator("article.group").first
    await expect(group).to_have_attribute("data-phase", "running", timeout=WAIT_MS)
    monkeypatch.setattr(monitor, "MAX_BUFFERED", 0)  # the next stored write is one too many
    await clients[0].send("decisions", 0.8, "a")
    await expect(live).to_have_attribute("data-last-close", "4008", timeout=WAIT_MS)
    monkeypatch.undo()
    return exp, clients, live, group


async def test_monitor_cut_off_for_falling_behind_reconnects_to_a_fresh_snapshot(
    server: Harness, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed 4008, the page reconnects by itself and shows what happened meanwhile."""
    exp, clients, live, group = await cut_off_for_falling_behind(server, page, monkeypatch)
    people = exp["participants"]
    await clients[1].send("decisions", 0.3, "b")

    await expect(live).to_have_attribute("data-snapshots", "2", timeout=WAIT_MS)
    await expect(live).to_have_text("Live")
    first, second = (p["label"] for p in people)
    await expect(group.locator(".chart-summary")).to_have_text(f"Decisions: {first} 0.80, {second} 0.30", timeout=WAIT_MS)
    await expect(group).to_have_attribute("data-phase", "running")


#: every button of the page whose endpoint needs ``admin``: the experiment's controls, the
#: downloads and each group's controls (the create form is looked at by itself)
ADMIN_BUTTONS = "button[data-action], button[data-download]"


async def test_monitor_with_a_watch_token_follows_live_and_is_told_why_it_has_no_controls(
    server: Harness, page: Page
) -> None:
    """A ``watch`` token: the live view works (its socket authenticated by the first frame), the
    controls are not offered and a note naming the token and its role says why; were a hidden
    control used anyway (a page's script, say), the refusal names the role and the token is kept.
    Once revoked, the live view is cut off (4403), the token form comes back and the page forgets
    the role."""
    watch = await server.runtime.database.write(add_token, "ta-anna", "watch")
    exp = await server.create(period_length=60)
    await page.goto(f"{server.base}/monitor?experiment={exp['code']}#token={watch}")
    live = page.locator("#live-state")
    await expect(live).to_have_text("Live", timeout=WAIT_MS)
    await expect(live).to_have_attribute("data-snapshots", "1", timeout=WAIT_MS)
    assert "token" not in page.url
    pause = page.locator('button[data-action="pause"]:not([data-group])')
    await expect(pause).to_be_attached()
    await expect(pause).to_be_hidden()
    note = page.locator("#controls-note")
    await expect(note).to_contain_text("Your token 'ta-anna' has the role watch")
    await expect(note).to_contain_text("need an admin token")

    await pause.dispatch_event("click")
    error = page.get_by_role("alert")
    await expect(error).to_contain_text("the token 'ta-anna' has the role watch; controlling experiments needs admin",
                                        timeout=WAIT_MS)
    assert await page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") == watch
    await expect(page.locator("body")).to_have_attribute("data-role", "watch")

    assert await server.runtime.database.write(revoke_token, "ta-anna")
    await expect(live).to_have_attribute("data-last-close", "4403", timeout=WAIT_MS)
    await expect(error).to_contain_text("'ta-anna' was revoked", timeout=WAIT_MS)
    await expect(page.get_by_label("Experimenter token")).to_be_visible()
    assert await page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None
    assert await page.evaluate("document.body.dataset.role") is None
    await expect(note).to_be_hidden()


@pytest.mark.parametrize("role", ["admin", "watch"])
async def test_monitor_offers_creating_controlling_and_exporting_to_an_admin_token_only(
    server: Harness, page: Page, role: str
) -> None:
    """The page asks ``GET /api/me`` who its token is (a token of the table, as ``synclab token
    create`` makes). An ``admin`` is offered the create form, the experiment's and each group's
    controls and the downloads, and uses them; a ``watch`` token is offered none of them (hidden,
    so out of the keyboard's reach too), notes naming the token and its role say why, and what it
    may read is all there: the list, the participants' links, the live groups."""
    name = f"someone-{role}"
    token = await server.runtime.database.write(add_token, name, role)
    exp = await server.create(period_length=60)
    admin = role == "admin"
    await page.goto(f"{server.base}/monitor#token={token}")
    await expect(page.locator("#page-info")).to_have_text(re.compile(r"\(1 experiments\)"), timeout=WAIT_MS)
    await expect(page.locator("body")).to_have_attribute("data-role", role)
    await expect(page.locator("#token-account")).to_have_text(f"Token '{name}' (role {role})")

    create = page.locator("#create-form")
    submit = create.locator("button[type=submit]")
    await expect(submit).to_have_text("Create experiment")
    create_note = page.locator("#create-note")
    if admin:
        await expect(create).to_be_visible()
        await expect(submit).to_be_enabled()
        await expect(create_note).to_be_hidden()
    else:
        await expect(create).to_be_hidden()
        await expect(submit).to_be_hidden()
        await expect(create_note).to_be_visible()
        await expect(create_note).to_contain_text(f"Your token '{name}' has the role watch")

    await page.get_by_role("link", name=exp["code"]).click()
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    clients = [await server.connect(person["code"]) for person in exp["participants"]]
    group = page.locator("article.group").first
    await expect(group).to_have_attribute("data-phase", "running", timeout=WAIT_MS)
    for person in exp["participants"]:
        await expect(page.get_by_role("link", name=person["url"])).to_be_visible()
    await expect(page.get_by_role("button", name="Copy all links")).to_be_visible()

    buttons = page.locator(ADMIN_BUTTONS)
    await expect(buttons).to_have_count(4 + 7 + 4)  # the experiment's controls, the downloads, the group's
    await expect(group.locator("button[data-action]")).to_have_count(4)
    offered = page.locator(", ".join(f"{b}:visible" for b in ADMIN_BUTTONS.split(", ")))
    controls_note = page.locator("#controls-note")
    if admin:
        await expect(offered).to_have_count(15)
        for index in range(15):
            await expect(offered.nth(index)).to_be_enabled()
        await expect(controls_note).to_be_hidden()
        await group.get_by_role("button", name="pause").click()
        await expect(group).to_have_attribute("data-phase", "paused", timeout=WAIT_MS)
        for client in clients:
            assert (await client.expect("period"))["payload"]["status"] == "paused"
    else:
        await expect(offered).to_have_count(0)
        await expect(controls_note).to_be_visible()
        await expect(controls_note).to_contain_text(f"Your token '{name}' has the role watch")
        await expect(page.get_by_role("group", name="Experiment controls")).to_have_count(0)
        await expect(page.get_by_role("group", name="Downloads")).to_have_count(0)


async def test_monitor_marks_the_events_a_bot_made(server: Harness, page: Page) -> None:
    """A member drops out of an online experiment: the bot's decisions appear in the event log marked."""
    exp = await server.create(game="public_goods", participants=2, group_size=2, period_length=6,
                              online={"dropout_after": 0.5})
    await page.goto(f"{server.base}/monitor?experiment={exp['code']}#token={TOKEN}")
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    stays, leaves = [await server.connect(p["code"]) for p in exp["participants"]]
    assert (await stays.expect("state"))["payload"] == "period_start"
    await leaves.close()
    marked = page.locator("#x-log tr.bot").first
    await expect(marked).to_contain_text("(bot)", timeout=WAIT_MS)
    await expect(marked).to_contain_text("decisions")
    await stays.send("decisions", 3, "mine")
    await stays.expect("ack")
    human = page.locator("#x-log tr:not(.bot)", has_text="decisions").first
    await expect(human).to_be_visible(timeout=WAIT_MS)
    await expect(human).not_to_contain_text("(bot)")


async def test_another_site_cannot_frame_the_monitor_but_may_frame_a_participants_page(
    server: Harness, page: Page
) -> None:
    """The monitor holds the experimenter's controls: a page of another origin that frames it gets
    nothing (``frame-ancestors 'none'``: a click there cannot end an experiment); a participant's
    page may be framed (a lab's oTree page, say). Every answer says nosniff and no referrer."""
    exp = await server.create()
    participant = f"{server.base}/p/{exp['participants'][0]['code']}"
    await page.set_content(
        f'<iframe id="m" src="{server.base}/monitor"></iframe><iframe id="p" src="{participant}"></iframe>'
    )
    urls: list[str] = []
    for _ in range(100):  # until both frames have settled on a document
        urls = [f.url for f in page.frames[1:]]
        if len(urls) == 2 and all(url not in ("", "about:blank") for url in urls):
            break
        await asyncio.sleep(0.05)
    assert participant in urls, urls
    assert f"{server.base}/monitor" not in urls, f"the monitor was framed: {urls}"
    monitor_answer = await server.http.get("/monitor")
    participant_answer = await server.http.get(participant)
    assert monitor_answer.headers["x-frame-options"] == "DENY"
    assert monitor_answer.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert "x-frame-options" not in participant_answer.headers
    for answer in (monitor_answer, participant_answer, await server.http.get("/api/experiments")):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"


async def test_a_game_named_by_its_import_path_stays_in_its_place_in_the_overview(server: Harness, page: Page) -> None:
    """`examples.min_effort:MinEffort`, one word wider than a column of the overview, ran over the
    participants' number beside it ("MinEff4ort"): every value is wrapped within its column."""
    exp = await server.create(game="examples.min_effort:MinEffort", participants=2, group_size=2, period_length=30)
    await page.goto(f"{server.base}/monitor?experiment={exp['code']}#token={TOKEN}")
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    await expect(page.locator("#x-summary")).to_contain_text("examples.min_effort:MinEffort")
    overflowing = await page.evaluate(
        """() => [...document.querySelectorAll('#x-summary dd, #x-stats dd')]
             .filter((dd) => dd.scrollWidth > dd.clientWidth || dd.getBoundingClientRect().right >
                             dd.parentElement.getBoundingClientRect().right + 0.5)
             .map((dd) => dd.textContent)"""
    )
    assert overflowing == []


async def test_monitor_creates_an_experiment_of_a_game_named_by_its_import_path(server: Harness, page: Page) -> None:
    """The guide names a game of one's own by import path, which the form's list (the registered
    games) never held: only curl could create it. The list's last choice takes a path; a path
    that does not import is refused on that field."""
    await page.goto(f"{server.base}/monitor#token={TOKEN}")
    await expect(page.locator("#f-game option[value=bimatrix]")).to_be_attached(timeout=WAIT_MS)
    path = page.locator("#f-game_path")
    await expect(path).to_be_hidden()  # while a registered game is chosen
    await page.get_by_label("Game", exact=True).select_option(label="Another game, by import path…")
    path = page.get_by_role("textbox", name="Import path (module:Class)")
    await expect(path).to_be_visible()
    await path.fill("examples.min_effort:NoSuchGame")
    await page.get_by_role("button", name="Create experiment").click()
    await expect(page.get_by_role("alert")).to_contain_text("has no attribute 'NoSuchGame'", timeout=WAIT_MS)
    await expect(path).to_have_attribute("aria-invalid", "true")
    await path.fill("examples.min_effort:MinEffort")
    await page.get_by_role("spinbutton", name="Participants").fill("4")
    await page.get_by_role("button", name="Create experiment").click()
    await page.wait_for_url(re.compile(r"\?experiment=[A-Za-z0-9_-]+"), timeout=WAIT_MS)
    detail = (await server.http.get(f"/api/experiments/{page.url.rsplit('=', 1)[1]}")).json()
    assert (detail["game"], detail["num_participants"], detail["config"]) == ("examples.min_effort:MinEffort", 4, {"a": 2, "b": 1})


async def test_monitor_opened_on_a_finished_experiment_shows_its_latest_stored_events_and_blocks_from_1(
    server: Harness, page: Page
) -> None:
    """A finished two-block experiment: the monitor opened afterwards lists its last 25 stored events,
    the newest first, as the events API has them (it showed none: only events arriving live), a
    result as the server's to its recipient; its blocks are numbered 1 and 2, in the blocks table
    and on each group, as on the participant page."""
    # periods of 2 s: a decision sent at period_start must come before the end, and on a busy
    # machine (the suite beside a process writing to the disk) one of 0.6 s ended first
    exp = await server.create(game="bimatrix", participants=2, group_size=2, blocks=2, period_length=2,
                              num_subperiods=2, block_pause=0.2)
    code = exp["code"]
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    for block in range(2):
        await until_state(clients[0], "period_start")
        await decide(clients[0], 0.75, f"r{block}")
        await until_state(clients[0], "period_end")
    await wait_for_status(server, code, "done")
    stored = await server.events(code)
    assert len(stored) > 25
    await page.goto(f"{server.base}/monitor?experiment={code}#token={TOKEN}")
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    rows = page.locator("#x-log tbody tr")
    await expect(rows).to_have_count(25, timeout=WAIT_MS)
    await expect(page.locator("#x-log")).to_have_attribute("data-filled", "true")
    seqs = [int(await row.get_attribute("data-seq") or 0) for row in await rows.all()]
    assert seqs == [e["seq"] for e in reversed(stored[-25:])]
    newest = stored[-1]
    await expect(rows.first).to_contain_text(newest["channel"])
    # a result is the server's, shown with its recipient; the server's other events as the server's
    labels = {p["code"]: p["label"] for p in exp["participants"]}
    shown = [e for e in stored[-25:] if e["channel"] in ("result", "state")]
    assert {e["channel"] for e in shown} == {"result", "state"}
    for e in shown:
        who = f"server → {labels[e['recipient']]}" if e["channel"] == "result" else "server"
        await expect(page.locator(f'#x-log tbody tr[data-seq="{e["seq"]}"] td').nth(3)).to_have_text(who)
    await expect(page.locator("#x-blocks tbody tr td:first-child")).to_have_text(["1", "2"])
    headers = [await h.text_content() for h in await page.locator("article.group h4 .help").all()]
    assert sorted(h.split(" · ")[0] for h in headers if h) == ["block 1", "block 2"], headers


async def test_a_waiting_groups_chart_spans_its_periods_configured_length(server: Harness, page: Page) -> None:
    """No member has come: the group waits, and its chart's axis spans the period's 45 s (it spanned 10 s
    whatever the period's length)."""
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=45)
    await page.goto(f"{server.base}/monitor?experiment={exp['code']}#token={TOKEN}")
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    group = page.locator("article.group").first
    await expect(group).to_have_attribute("data-phase", "waiting", timeout=WAIT_MS)
    await expect(group.locator(".countdown")).to_have_text("waiting for every member")
    await expect(group.locator("canvas")).to_have_attribute("data-axis-seconds", "45", timeout=WAIT_MS)


async def test_monitor_cut_off_for_falling_behind_lists_the_events_stored_while_it_was_away(
    server: Harness, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed 4008, the page reconnects: its latest events hold every stored event, in seq order,
    the ones stored between the cut and the new snapshot too (they were missing: the log was
    filled from the events API only at the first snapshot)."""
    exp, _clients, live, group = await cut_off_for_falling_behind(server, page, monkeypatch)
    await expect(live).to_have_attribute("data-snapshots", "2", timeout=WAIT_MS)
    await expect(group.locator(".chart-summary")).to_contain_text("0.80", timeout=WAIT_MS)

    stored = await server.events(exp["code"])
    decision = next(e for e in stored if e["channel"] == "decisions")
    expected = [str(e["seq"]) for e in reversed(stored[-25:])]
    assert str(decision["seq"]) in expected
    await expect(page.locator("#x-log tbody tr td:first-child")).to_have_text(expected, timeout=WAIT_MS)


async def test_monitor_shows_no_latest_events_of_the_experiment_it_left(server: Harness, page: Page) -> None:
    """The experimenter opens experiment A, then goes to B before A's latest events came back from
    the server: B's log holds none of A's rows (A's answer, late, was added to B's log)."""
    first = await server.create(period_length=60)
    clients = [await server.connect(p["code"]) for p in first["participants"]]
    await until_state(clients[0], "period_start")
    await decide(clients[0], 0.75, "a")
    assert len(await server.events(first["code"])) > 2
    second = await server.create(period_length=60)  # nobody came: no event stored

    asked = asyncio.Event()
    answered = asyncio.Event()

    async def hold(route: Route) -> None:
        asked.set()
        await answered.wait()
        await route.continue_()

    await page.route(re.compile(rf"/api/experiments/{first['code']}/events\?"), hold)
    await page.goto(f"{server.base}/monitor?experiment={first['code']}#token={TOKEN}")
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    await asyncio.wait_for(asked.wait(), timeout(10))

    await page.locator("#back-link").click()
    await page.locator(f'#experiments a:text-is("{second["code"]}")').click()
    await expect(page.locator("#x-code")).to_have_text(second["code"])
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    async with page.expect_response(re.compile(rf"/api/experiments/{first['code']}/events\?")) as late:
        answered.set()
    assert (await late.value).ok
    await page.evaluate("new Promise((done) => setTimeout(done, 100))")  # the page has read the answer
    await expect(page.locator("#x-log tbody tr")).to_have_count(0)


async def test_monitor_shows_no_status_of_the_experiment_it_left(server: Harness, page: Page) -> None:
    """Experiment A starts while its monitor is open; the experimenter goes to B before A's detail,
    which the page asks for at a change of status, came back: B's summary and status stay B's
    (A's answer, late, put A's game and status on B's page)."""
    first = await server.create(game="public_goods", participants=3, group_size=3, period_length=60)
    second = await server.create(game="bimatrix", period_length=60)
    detail_url = re.compile(rf"/api/experiments/{first['code']}$")
    asked = asyncio.Event()
    answered = asyncio.Event()
    calls = 0

    async def hold_the_second(route: Route) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:  # the page's first look passes; the one after the status changed waits
            asked.set()
            await answered.wait()
        await route.continue_()

    await page.route(detail_url, hold_the_second)
    await page.goto(f"{server.base}/monitor?experiment={first['code']}#token={TOKEN}")
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    for person in first["participants"]:
        await server.connect(person["code"])
    await asyncio.wait_for(asked.wait(), timeout(10))

    await page.locator("#back-link").click()
    await page.locator(f'#experiments a:text-is("{second["code"]}")').click()
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    await expect(page.locator("#x-summary")).to_contain_text("bimatrix")
    async with page.expect_response(detail_url) as late:
        answered.set()
    assert (await late.value).ok
    await page.evaluate("new Promise((done) => setTimeout(done, 100))")  # the page has read the answer
    await expect(page.locator("#x-status")).to_have_text("pending")
    await expect(page.locator("#x-summary")).to_contain_text("bimatrix")
    await expect(page.locator("#x-summary")).not_to_contain_text("public_goods")
