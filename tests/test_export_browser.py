"""The export buttons of the History and runs pages in a real browser (Debian's chromium via
Playwright) against a real server on a seeded SQLite database: the download holds the rows the
filtered page shows."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect
from server_testlib import browser_logged_in, make_server_config
from test_history_web import Seeded, seed

from server.web.api.export import EVENT_FIELDS

if TYPE_CHECKING:
    from server_testlib import WatchedPage

    from server.app import RunningServer

pytestmark = pytest.mark.browser


@pytest.fixture
async def server(
    sqlite_db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, list[Seeded]]]:
    from server.app import start_server

    seeded = await seed(sqlite_db_url)
    running = await start_server(make_server_config(sqlite_db_url, tmp_path))
    try:
        yield running, seeded
    finally:
        await running.stop()


async def test_export_csv_downloads_the_filtered_rows(
    server: tuple[RunningServer, list[Seeded]], browser_page: WatchedPage, tmp_path: Path
) -> None:
    running, seeded = server
    page = browser_page.page
    await browser_logged_in(running, page, "viewer")
    await page.goto(f"{running.web_url}/history")
    rows = page.locator("li.event")
    await expect(rows).to_have_count(len(seeded))

    # Filter with the form: failures and warnings of migration events.
    await page.get_by_role("checkbox", name="Error").check()
    await page.get_by_role("checkbox", name="Warning").check()
    await page.get_by_role("checkbox", name="Migration events only").check()
    await page.get_by_role("button", name="Apply filters").click()
    await page.wait_for_url(re.compile(r"severity=error"))
    shown = [
        int(str(element_id).removeprefix("event-"))
        for element_id in await rows.evaluate_all("(rows) => rows.map((r) => r.id)")
    ]
    assert 0 < len(shown) < len(seeded)

    link = page.get_by_role("link", name="Export CSV")
    href = await link.get_attribute("href")
    assert href is not None and href.startswith("/api/v1/events/export?format=csv&")
    assert "severity=error" in href and "migration_only=1" in href
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    assert re.fullmatch(r"flagpost-history-\d{8}T\d{6}Z\.csv", download.suggested_filename)
    target = tmp_path / download.suggested_filename
    await download.save_as(target)
    reader = csv.reader(io.StringIO(target.read_text(encoding="utf-8"), newline=""))
    assert tuple(next(reader)) == EVENT_FIELDS
    exported = [dict(zip(EVENT_FIELDS, row, strict=True)) for row in reader]
    assert [int(row["id"]) for row in exported] == shown
    assert {row["severity"] for row in exported} <= {"error", "warning"}
    assert {row["category"] for row in exported} == {"migration"}

    # JSON lines: the same rows
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Export JSON lines").click()
    jsonl = await info.value
    assert jsonl.suggested_filename.endswith(".jsonl")
    assert browser_page.problems == [] and browser_page.dialogs == []


async def test_the_runs_page_exports_its_filter(
    server: tuple[RunningServer, list[Seeded]], browser_page: WatchedPage
) -> None:
    running, _ = server
    page = browser_page.page
    await browser_logged_in(running, page, "viewer", next_path="/runs")
    await page.get_by_role("checkbox", name="Failed").check()
    await page.get_by_role("button", name="Apply filters").click()
    await page.wait_for_url(re.compile(r"state=FAILED"))
    link = page.get_by_role("link", name="Export JSON lines")
    assert await link.get_attribute("href") == "/api/v1/runs/export?format=jsonl&state=FAILED"
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    assert re.fullmatch(r"flagpost-runs-\d{8}T\d{6}Z\.jsonl", download.suggested_filename)
    path = await download.path()
    assert path.read_text() == ""  # no runs seeded
    assert browser_page.problems == [] and browser_page.dialogs == []
