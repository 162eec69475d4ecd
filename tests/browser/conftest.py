"""A real Chromium for the browser tests: Debian's ``chromium`` driven by Python Playwright.

Playwright's own browser download is never used (``playwright install`` is not run): the
tests launch the system's Chromium through ``executable_path``; ``SYNCLAB_CHROMIUM`` names
another binary. Without a Chromium the tests skip loudly, except with ``CI=true``, where they
fail: ``.ci/run`` installs Debian's ``chromium``.

One Chromium serves every browser test that a test process runs one after another (its
Playwright driver and its launch took 2-3 s a test): the tests and their async fixtures run in
the package's event loop (``LOOP``: each module's ``pytestmark``, each fixture's ``loop_scope``),
and each test still gets browser contexts of its own (its own storage, as another computer).
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from tests.server.harness import Harness, running_server, timeout

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("SYNCLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: the event loop the browser tests and their async fixtures share with the browser
LOOP = "package"
#: each browser test module's mark: its tests run in that loop
IN_LOOP = pytest.mark.asyncio(loop_scope=LOOP)


def _outside_loop(item: pytest.Item) -> list[str]:
    """What of a browser test would run outside :data:`LOOP`: the test itself (its module without
    ``pytestmark = IN_LOOP``), an async fixture of this package's without ``loop_scope=LOOP``.
    Either would meet the browser or the server from another loop: a Playwright call raises
    "attached to a different loop", a request to the server times out, naming neither."""
    if not isinstance(item, pytest.Function):
        return []
    problems = []
    if inspect.iscoroutinefunction(item.obj):
        mark = item.get_closest_marker("asyncio")
        if mark is None or (mark.kwargs.get("loop_scope") or mark.kwargs.get("scope")) != LOOP:
            problems.append(f"its module has no `pytestmark = IN_LOOP` (from {__name__})")
    here = Path(__file__).parent
    for name in item.fixturenames:
        for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ()):
            func = fixturedef.func
            asynchronous = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
            defined = Path(inspect.getfile(func)).resolve()
            if asynchronous and here in defined.parents and getattr(func, "_loop_scope", None) != LOOP:
                problems.append(f"its fixture {name} is not declared with loop_scope=LOOP")
    return problems


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A browser test that would run outside the browser's loop fails at once, saying why."""
    problems = _outside_loop(item)
    if problems:
        pytest.fail(f"{item.nodeid}: a browser test runs in the loop of the browser ({LOOP!r}): "
                    + "; ".join(problems), pytrace=False)


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: the browser tests must run; .ci/run installs Debian's chromium)")
    pytest.skip(f"SKIPPING BROWSER TESTS — {what}")


@pytest_asyncio.fixture(scope=LOOP, loop_scope=LOOP)
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium, closed after the last browser test of this test process's run of them."""
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM}; apt-get install chromium or set SYNCLAB_CHROMIUM")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=timeout(30) * 1000
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def server(sqlite_url: str) -> AsyncIterator[Harness]:
    """The suite's ``server`` (a real server on port 0, on SQLite), in the browser tests' loop."""
    async with running_server(sqlite_url) as harness:
        yield harness


@pytest_asyncio.fixture(loop_scope=LOOP)
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh page (its own localStorage) whose waits are bounded; it must raise no JS error."""
    context = await browser.new_context(viewport={"width": 1200, "height": 1600}, accept_downloads=True)
    context.set_default_timeout(timeout(10) * 1000)
    new_page = await context.new_page()
    errors: list[str] = []  # uncaught exceptions; a refused fetch is a console error, not one of these
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield new_page
    finally:
        await context.close()
    assert not errors, f"the page raised uncaught exceptions: {errors}"
