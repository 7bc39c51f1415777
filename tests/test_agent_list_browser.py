"""The fleet page's agent list in a real chromium against a real server with real check-ins:
a health card filters the list (and is marked), the search form narrows it, a column head sorts
it and sorts it back, and a bad value shows its error next to the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from runs_testlib import AgentClient
from server_testlib import browser_logged_in, make_server_config

from server.app import RunningServer, start_server

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(make_server_config(sqlite_db_url, tmp_path))
    try:
        yield running
    finally:
        await running.stop()


async def test_cards_search_and_sort(server: RunningServer, browser_page: WatchedPage) -> None:
    page = browser_page.page
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for host, role, version in (
            ("web-1", "web", "2"),
            ("web-2", "web", "10"),
            ("db-1", "db", "9"),
        ):
            agent = await AgentClient.enroll(server, channel, host)
            agent.facts.labels.update({"role": role})
            agent.facts.config_version = version
            await agent.checkin()
        await AgentClient.enroll(server, channel, "cache-1")  # enrolled, never checked in
    await browser_logged_in(server, page, "viewer", "/")
    hosts = page.locator("#agent-list tbody th a")
    assert await hosts.all_inner_texts() == ["cache-1", "db-1", "web-1", "web-2"]

    async with page.expect_navigation():
        await page.locator("a.card-never").click()
    assert await hosts.all_inner_texts() == ["cache-1"]
    assert await page.locator("a.card-never").get_attribute("aria-current") == "true"
    assert await page.locator("#agent-health").input_value() == "never"
    assert "1 of 4 agents match" in await page.locator("#agent-list-count").inner_text()

    async with page.expect_navigation():
        await page.locator("a.card-online").click()
    await page.locator("#agent-q").fill("role=web")
    async with page.expect_navigation():
        await page.locator("#agent-q").press("Enter")
    assert await hosts.all_inner_texts() == ["web-1", "web-2"]

    # Config version sorts in natural order: 2 before 10; its head again: 10 before 2.
    head = page.locator("#agent-list thead th", has_text="Config version")
    async with page.expect_navigation():
        await head.locator("a").click()
    assert await hosts.all_inner_texts() == ["web-1", "web-2"]
    assert await head.get_attribute("aria-sort") == "ascending"
    async with page.expect_navigation():
        await head.locator("a").click()
    assert await hosts.all_inner_texts() == ["web-2", "web-1"]
    assert await head.get_attribute("aria-sort") == "descending"
    assert await page.locator("#agent-q").input_value() == "role=web"  # the filters stay

    await page.goto(f"{server.web_url}/?health=asleep&q=db-1#agents-title")
    error = page.locator("#agent-health-error")
    assert "must be one of online" in await error.inner_text()
    assert await page.locator("#agent-health").get_attribute("aria-invalid") == "true"
    assert await hosts.all_inner_texts() == ["db-1"]
    assert browser_page.bad_responses == [f"400 {server.web_url}/?health=asleep&q=db-1"]
