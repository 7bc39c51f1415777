"""The fleet page's selector in a real chromium: labels and tags per agent, the live count while
typing (errors name the position), and an admin's bulk tag after a confirmation naming the
count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from runs_testlib import AgentClient
from server_testlib import browser_logged_in, make_server_config

from server import app_keys
from server.app import RunningServer, start_server
from server.services import targets

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


async def test_live_count_and_bulk_tag(server: RunningServer, browser_page: WatchedPage) -> None:
    page = browser_page.page
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for host, role in (("web-1", "web"), ("web-2", "web"), ("db-1", "db")):
            agent = await AgentClient.enroll(server, channel, host)
            agent.facts.labels.update({"env": "prod", "role": role})
            await agent.checkin()
    await browser_logged_in(server, page, "admin", "/")
    count = page.locator("#selector-count")
    await count.filter(has_text="3 hosts match").wait_for()
    row = page.locator("tr", has=page.locator("a", has_text="db-1"))
    assert "env=prod" in await row.inner_text() and "role=db" in await row.inner_text()

    await page.locator("#selector-input").press_sequentially("role in (web", delay=10)
    await count.filter(has_text="select[0]: expected ')' at 12").wait_for()
    await page.locator("#selector-input").press_sequentially(")")
    await count.filter(has_text="2 hosts match").wait_for()
    assert await page.locator("#selector-hosts").inner_text() == "web-1, web-2"

    await page.locator("#selector-tag").fill("canary")
    add = page.locator("#selector-tag-add")
    await add.click()  # the fixture dismisses the confirmation: nothing changes
    assert browser_page.dialogs == ["Add tag \u201ccanary\u201d to 2 hosts?"]
    await page.evaluate("window.confirm = function () { return true; }")
    async with page.expect_navigation():
        await add.click()
    await page.locator("#selector-count").filter(has_text="3 hosts match").wait_for()
    web1 = page.locator("tr", has=page.locator("a", has_text="web-1"))
    assert await web1.locator(".tag-server").text_content() == "canary"
    selection = await targets.select_agents(
        server.app[app_keys.SESSIONS], server.app[app_keys.CONFIG], ["canary"]
    )
    assert sorted(h for _, h in selection.agents) == ["web-1", "web-2"]
    assert all("status of 400" in p for p in browser_page.problems), browser_page.problems
    # the only refusals: the count of the unfinished expression (400 naming the position)
    assert all(
        r.startswith("400 ") and "/api/v1/agents/select/count?" in r
        for r in browser_page.bad_responses
    ), browser_page.bad_responses
