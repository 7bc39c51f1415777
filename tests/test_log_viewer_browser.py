"""The run page's log viewer in chromium against a real server (issue 15): the search filters
the page's lines while typing and highlights matches, live lines too; a line's permalink opens
the page at that line; a finished run opens at its top; the whole log downloads as text and
as JSON lines matching the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from playwright.async_api import expect
from server_testlib import browser_logged_in, logged_in_http, make_server_config
from test_runs_pages import XSS, RunAgent, start_with_settings

from server.app import RunningServer

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser
LINES = 120


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_with_settings(make_server_config(sqlite_db_url, tmp_path))
    try:
        yield running
    finally:
        await running.stop()


async def test_search_highlight_permalink_and_download(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await RunAgent.enroll(server, channel, "web-01")
        run = await agent.start_run()
        lines = [
            agent.line(run, f"line {n}: Disk check ok" if n % 10 == 0 else f"line {n}: copying")
            for n in range(1, LINES + 1)
        ]
        lines.append(agent.line(run, f"disk note {XSS}", "WARNING"))
        await agent.check_in([], lines)
        await browser_logged_in(server, page, "viewer", f"/runs/{run.run_id}")
        shown = page.locator("#log-lines > li:visible")
        await expect(shown).to_have_count(LINES + 1)

        # Instant filtering, case-insensitive, with the matches marked (markup stays text).
        await page.locator("#f-q").press_sequentially("DISK", delay=20)
        await expect(shown).to_have_count(LINES // 10 + 1)
        await expect(page.locator("#log-match")).to_have_text(
            f"{LINES // 10 + 1} of {LINES + 1} lines on the page match"
        )
        hits = page.locator("mark.log-hit")
        await expect(hits).to_have_count(LINES // 10 + 1)
        assert {t.lower() for t in await hits.all_inner_texts()} == {"disk"}
        assert "disk note <script>" in (await shown.last.inner_text()).lower()
        assert "page=1" not in page.url and "q=" not in page.url  # nothing was submitted
        # A live line is filtered as it arrives.
        await agent.check_in(
            [], [agent.line(run, "live Disk line"), agent.line(run, "live other line")]
        )
        await expect(page.locator("#log-lines")).to_contain_text("live other line")
        await expect(shown.last).to_contain_text("live Disk line")
        await expect(shown).to_have_count(LINES // 10 + 2)
        await page.locator("#f-q").fill("")
        await page.locator("#f-q").dispatch_event("input")
        await expect(shown).to_have_count(LINES + 3)
        await expect(hits).to_have_count(0)

        # The run finishes: it opens at its top; a line's link opens at that line.
        run.state = "SUCCEEDED"
        await agent.check_in([agent.update(run)])
        await page.goto(f"{server.web_url}/runs/{run.run_id}")
        await expect(page.locator("#log-lines > li")).to_have_count(LINES + 3)
        assert await page.evaluate("document.getElementById('log-view').scrollTop") == 0
        await page.locator("#log-80 a.log-seq").click()
        assert page.url.endswith("#log-80")
        await page.goto(f"{server.web_url}/runs/{run.run_id}#log-80")
        await page.reload()
        await expect(page.locator("#log-80")).to_be_in_viewport()
        assert await page.evaluate("document.getElementById('log-view').scrollTop") > 0
        assert await page.evaluate("document.querySelector('.log-line:target').id") == "log-80"
    assert browser_page.problems == []

    # Downloads: every line, as text and as the API's JSON lines.
    async with logged_in_http(server, "viewer") as http:
        async with http.get(f"{server.web_url}/runs/{run.run_id}/log.txt") as response:
            assert response.status == 200
            assert "attachment" in response.headers["Content-Disposition"]
            text = (await response.text()).splitlines()
        async with http.get(f"{server.web_url}/runs/{run.run_id}/log.jsonl") as response:
            assert response.headers["Content-Type"].startswith("application/x-ndjson")
            records = [json.loads(line) for line in (await response.text()).splitlines()]
        async with http.get(
            f"{server.web_url}/api/v1/runs/{run.run_id}/logs", params={"limit": "5000"}
        ) as response:
            api = (await response.json())["lines"]
        async with http.get(
            f"{server.web_url}/runs/00000000-0000-0000-0000-000000000000/log.txt"
        ) as r:
            assert r.status == 404
    assert records == api and len(records) == LINES + 3
    assert [line.split("\t")[0] for line in text] == [str(r["seq"]) for r in api]
    assert text[0].split("\t")[2:] == ["INFO", "executor", "line 1: copying"]
