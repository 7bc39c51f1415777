"""The fleet page's chart range in a real chromium against a real server: a range link
switches the chart (its heading, the link marked current, ``range`` in the URL) and keeps the
agent list's search and sort; the list's links and filter form keep the range; a refused range
shows its error next to the links; at 390 px no range makes the page wider than the screen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from runs_testlib import AgentClient
from server_testlib import browser_logged_in, make_server_config
from test_fleet_chart_range import mid_bucket, seed_events

from server.app import RunningServer, start_server
from server.domain import ChartRange, Severity

if TYPE_CHECKING:
    from playwright.async_api import Page
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser

NARROW = 390


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    now = datetime.now(UTC)
    # 2 events in the last 24 hours and 3 more in the last 7 days, each mid-bucket.
    await seed_events(
        sqlite_db_url,
        [
            *[(mid_bucket(now, ChartRange.DAY, 3), Severity.ERROR)] * 2,
            *[(mid_bucket(now, ChartRange.WEEK, 12), Severity.SUCCESS)] * 3,
        ],
    )
    running = await start_server(make_server_config(sqlite_db_url, tmp_path))
    try:
        yield running
    finally:
        await running.stop()


async def current_range(page: Page) -> list[str]:
    """The labels of the range links marked aria-current="page"."""
    return await page.locator('nav.range-links a[aria-current="page"]').all_inner_texts()


def query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


async def test_range_links_switch_the_chart_and_keep_the_list(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for host in ("web-1", "web-2", "db-1"):
            agent = await AgentClient.enroll(server, channel, host)
            await agent.checkin()
    await browser_logged_in(server, page, "viewer", "/")
    await page.goto(f"{server.web_url}/?q=web&sort=checkin&order=desc")
    heading = page.locator("#chart-title")
    hosts = page.locator("#agent-list tbody th a")
    desc = page.locator("#events-chart-desc")
    assert await heading.inner_text() == "Events per hour, last 24 hours"
    assert await current_range(page) == ["24 h"]
    assert (await desc.text_content() or "").startswith("2 events in the last 24 hours")

    async with page.expect_navigation():
        await page.locator("nav.range-links").get_by_role("link", name="7 d").click()
    assert await heading.inner_text() == "Events per 6 hours, last 7 days"
    assert await current_range(page) == ["7 d"]
    assert query(page) == {
        "q": ["web"],
        "sort": ["checkin"],
        "order": ["desc"],
        "range": ["7d"],
    }
    assert (await desc.text_content() or "").startswith("5 events in the last 7 days")
    assert await page.locator("svg.chart-svg g.chart-bar").count() == 28
    assert sorted(await hosts.all_inner_texts()) == ["web-1", "web-2"]  # the search stays
    assert await page.locator("#agent-q").input_value() == "web"

    # The list's links keep the range: a column head, then the search form.
    async with page.expect_navigation():
        await page.locator("#agent-list thead th", has_text="Host").locator("a").click()
    assert query(page)["range"] == ["7d"] and "sort" not in query(page)
    assert await hosts.all_inner_texts() == ["web-1", "web-2"]
    assert await heading.inner_text() == "Events per 6 hours, last 7 days"
    await page.locator("#agent-q").fill("db-1")
    async with page.expect_navigation():
        await page.locator("#agent-q").press("Enter")
    assert query(page) == {"q": ["db-1"], "range": ["7d"]}
    assert await hosts.all_inner_texts() == ["db-1"]
    assert await current_range(page) == ["7 d"]

    async with page.expect_navigation():
        await page.locator("nav.range-links").get_by_role("link", name="30 d").click()
    assert await heading.inner_text() == "Events per day, last 30 days"
    assert query(page) == {"q": ["db-1"], "range": ["30d"]}

    # A refused range: its error beside the links, the default chart, the list still there.
    await page.goto(f"{server.web_url}/?range=1y&q=web")
    error = page.locator("#range-error")
    assert await error.inner_text() == "range: must be one of 24h, 7d, 30d"
    assert await error.get_attribute("role") == "alert"
    assert await page.locator("nav.range-links").get_attribute("aria-describedby") == "range-error"
    assert await heading.inner_text() == "Events per hour, last 24 hours"
    assert await current_range(page) == ["24 h"]
    assert await hosts.all_inner_texts() == ["web-1", "web-2"]
    assert browser_page.bad_responses == [f"400 {server.web_url}/?range=1y&q=web"]

    await page.set_viewport_size({"width": NARROW, "height": 800})
    for path in ("/?range=1y&q=web", "/?range=7d", "/?range=30d", "/"):
        await page.goto(server.web_url + path)
        assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW, path
        box = await page.locator("nav.range-links").bounding_box()
        assert box is not None and box["x"] + box["width"] <= NARROW, path
    # The two 400 pages log "Failed to load resource"; nothing else went wrong (CSP, script).
    assert [p for p in browser_page.problems if "status of 400" not in p] == []
    assert browser_page.dialogs == []
