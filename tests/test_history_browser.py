"""The History page in a real browser (Debian's chromium via Playwright) against a real server.

The server is the real one (``server.app.start_server``: gRPC + web on one loop) on a fresh
alembic-migrated SQLite database seeded through the storage layer.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect
from server_testlib import browser_logged_in, make_server_config, save_screenshot
from test_history_web import READONLY_ERROR, XSS_MESSAGE, Seeded, seed

if TYPE_CHECKING:
    from server_testlib import WatchedPage

    from server.app import RunningServer

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/history.png")


@pytest.fixture
async def server(
    sqlite_db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, list[Seeded]]]:
    from server.app import start_server  # imported here: needs the generated gRPC modules

    seeded = await seed(sqlite_db_url)
    config = make_server_config(sqlite_db_url, tmp_path)
    running = await start_server(config)
    try:
        yield running, seeded
    finally:
        await running.stop()


async def test_filter_expand_and_escape_in_chromium(
    server: tuple[RunningServer, list[Seeded]], browser_page: WatchedPage
) -> None:
    running, seeded = server
    failure = next(s for s in seeded if s.event.error_message == READONLY_ERROR)
    page = browser_page.page

    await browser_logged_in(running, page, "viewer")
    await page.goto(f"{running.web_url}/history")
    await expect(page.get_by_role("heading", name="History")).to_be_visible()
    rows = page.locator("li.event")
    await expect(rows).to_have_count(len(seeded))

    # The hostile message is shown as literal text and never runs.
    hostile = page.locator("li.event", has_text=XSS_MESSAGE)
    await expect(hostile).to_have_count(1)
    await expect(hostile.locator(".cell-message")).to_have_text(re.compile(re.escape(XSS_MESSAGE)))
    assert await page.evaluate("typeof window.__pwned") == "undefined"

    # Filter to failures with the form (a plain GET form: the URL keeps the filter).
    await page.get_by_role("checkbox", name="Error").check()
    await page.get_by_role("button", name="Apply filters").click()
    await page.wait_for_url(re.compile(r"severity=error"))
    expected_failures = sum(1 for s in seeded if s.event.severity.value == "error")
    await expect(rows).to_have_count(expected_failures)
    for label in await rows.locator(".sev-badge").all_inner_texts():
        assert label.strip() == "Error"
    await expect(page.get_by_role("checkbox", name="Error")).to_be_checked()

    # Expand the read-only-dir execution failure: no JavaScript involved.
    row = page.locator(f"#event-{failure.id}")
    detail = row.locator(".event-detail")
    await expect(detail).to_be_hidden()
    await row.locator("summary.event-summary").click()
    await expect(detail).to_be_visible()
    await expect(detail).to_contain_text("EACCES (errno 13)")
    await expect(detail).to_contain_text("move_legacy_config")
    await expect(detail).to_contain_text("Rolled back successfully")
    await expect(detail).to_contain_text("Permission denied")
    # Its run id was never reported as a run: shown, but not as a link to a page that 404s.
    await expect(detail).to_contain_text(f"{failure.event.run_id} (no run recorded)")
    await expect(detail.get_by_role("link", name=failure.event.run_id or "")).to_have_count(0)

    await save_screenshot(page, str(SCREENSHOT))

    # Back to everything: the hostile row's detail still renders as text.
    await page.goto(f"{running.web_url}/history?q=window.__pwned")
    await expect(rows).to_have_count(1)
    await rows.first.locator("summary.event-summary").click()
    await expect(rows.first.locator(".sysinfo")).to_contain_text("<b>key</b>")
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.locator("li.event script, li.event img, li.event svg[onload]").count() == 0

    assert browser_page.dialogs == []
    assert browser_page.problems == []  # includes CSP violations, which chromium logs
    assert browser_page.bad_responses == []
