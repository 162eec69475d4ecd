"""The monitor page in Chromium against a real ``synclab serve`` with its access log on: after a
session (the printed link with the token in its fragment, the list, the live view, a pause, a
download) the server's whole log holds every request and not the token."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from playwright.async_api import Page, expect

from tests.browser.conftest import IN_LOOP
from tests.server.harness import timeout
from tests.server.test_access_log import _whole_log
from tests.server.test_cli import free_port, started, wait_until_healthy

pytestmark = IN_LOOP

WAIT_MS = timeout(10) * 1000
LINK = re.compile(r"monitor at (http://\S+/monitor#token=([A-Za-z0-9_-]+))$")


async def test_a_monitor_session_in_chromium_leaves_no_token_in_the_servers_log(tmp_path: Path, page: Page) -> None:
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port)) as running:
        link, token = running.wait_for(LINK).groups()  # the first start: the generated token, once
        await asyncio.to_thread(wait_until_healthy, f"http://127.0.0.1:{port}")
        await page.goto(link)
        await expect(page.locator("#f-game option[value=bimatrix]")).to_be_attached(timeout=WAIT_MS)
        assert "token" not in page.url
        await page.get_by_role("spinbutton", name="Participants").fill("2")
        await page.get_by_role("button", name="Create experiment").click()
        await page.wait_for_url(re.compile(r"\?experiment=[A-Za-z0-9_-]+"), timeout=WAIT_MS)
        code = page.url.rsplit("=", 1)[1]
        await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
        await page.get_by_role("group", name="Experiment controls").get_by_role("button", name="Start").click()
        await expect(page.locator("#control-result")).to_contain_text("start:", timeout=WAIT_MS)
        async with page.expect_download(timeout=WAIT_MS) as downloading:
            await page.get_by_role("button", name="events.csv").click()
        await downloading.value
        await page.reload()  # the token comes from the browser's storage now
        await expect(page.locator("#live-state")).to_have_text("Live", timeout=WAIT_MS)
    log = _whole_log(running).replace(link, "")  # the one line that printed it, on purpose
    assert f"/ws/monitor/{code}" in log and "[accepted]" in log, log[-3000:]
    assert f'"POST /api/experiments/{code}/start HTTP/1.1" 200' in log, log[-3000:]
    assert "export.csv" in log, log[-3000:]
    assert token not in log, f"the token is in the server's log:\n{log}"
