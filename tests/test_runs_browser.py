"""The run page in a real browser (Debian's chromium via Playwright) against a real server: log
lines appear live, the level filter hides INFO lines, "Cancel run" cancels, and "Load more"
appends runs; a bad value sent by the runs filter form comes back next to its field, the form
kept. The agent is a real gRPC client reporting runs and log lines with check-ins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from playwright.async_api import Page, expect
from server_testlib import action_body, browser_logged_in, make_server_config, save_screenshot
from test_runs_pages import XSS, RunAgent, start_with_settings, step

from server.app import RunningServer

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp")
AT_BOTTOM = """() => {
  const v = document.getElementById("log-view");
  return v.scrollHeight > v.clientHeight && v.scrollHeight - v.scrollTop - v.clientHeight < 30;
}"""


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = make_server_config(sqlite_db_url, tmp_path)
    running = await start_with_settings(config)
    try:
        yield running
    finally:
        await running.stop()


CANCEL_QUESTION = "Cancel this run? The agent stops after its current step and rolls back."


async def test_run_page_live_tail_level_filter_and_cancel(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await RunAgent.enroll(server, channel, "web-01")
        other = await RunAgent.enroll(server, channel, "db-01")
        for _ in range(4):  # older runs for the list
            done = await other.start_run()
            done.state = "SUCCEEDED"
            await other.check_in([other.update(done)])
        run = await agent.start_run()
        await agent.check_in(
            [],
            [
                agent.line(run, "detected config version 1", "INFO", "detector"),
                agent.line(run, "backup written", "INFO", "executor", path="/var/backups/1"),
            ],
        )
        await step(agent, run)

        await browser_logged_in(server, page, "admin")  # admins may cancel
        await page.goto(f"{server.web_url}/runs/{run.run_id}")
        lines = page.locator("#log-lines > li")
        await expect(lines).to_have_count(3)
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

        # Live tail: lines checked in now appear without a reload, escaped.
        await agent.check_in(
            [],
            [
                agent.line(run, "converting format", "INFO", "convert_format"),
                agent.line(run, XSS, "WARNING", "convert_format"),
                agent.line(run, "disk almost full", "ERROR", "convert_format"),
            ],
        )
        await expect(lines).to_have_count(6, timeout=2000)
        await expect(page.locator("#log-6")).to_contain_text("disk almost full")
        await expect(page.locator("#log-5 .log-message")).to_have_text(XSS)
        assert await page.evaluate("window.__pwned") is None
        await expect(page.locator("[data-count-level=ERROR] strong")).to_have_text("1")
        # A step finishing updates the progress without a reload.
        await step(agent, run)
        await expect(page.locator(".run-progress-text")).to_contain_text("2 of 4 steps")
        await save_screenshot(page, str(SHOTS / "run.png"))

        # Auto-scroll follows the tail ...
        view = page.locator("#log-view")
        await agent.check_in(
            [],
            [agent.line(run, f"copying file {i}", "DEBUG", "split_secrets") for i in range(60)],
        )
        await expect(lines).to_have_count(67, timeout=2000)
        await page.wait_for_function(AT_BOTTOM, timeout=2000)
        # ... and pauses when the reader scrolls up: new lines do not move the view.
        await view.evaluate("v => { v.scrollTop = 0; }")
        follow = page.locator("#follow-button")
        await expect(follow).to_be_visible()
        await agent.check_in([], [agent.line(run, "one more", "DEBUG", "split_secrets")])
        await expect(lines).to_have_count(68, timeout=2000)
        assert await view.evaluate("v => v.scrollTop") == 0
        await expect(follow).to_contain_text("1 new")
        await follow.click()
        await page.wait_for_function(AT_BOTTOM, timeout=2000)
        await expect(follow).to_be_hidden()

        # The level filter: only warnings and errors; INFO lines are hidden ...
        await page.get_by_label("Warning").check()
        await page.wait_for_url("**level=WARNING**")
        await page.get_by_label("Error", exact=True).check()
        await page.wait_for_url("**level=ERROR**")
        await expect(page.locator("#log-lines > li.level-info")).to_have_count(0)
        await expect(lines).to_have_count(2)
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        # ... also those arriving live, while matching ones still appear.
        await agent.check_in(
            [],
            [
                agent.line(run, "an info line", "INFO", "split_secrets"),
                agent.line(run, "a warning line", "WARNING", "split_secrets"),
            ],
        )
        await expect(page.locator("#log-lines")).to_contain_text("a warning line")
        await expect(page.locator("#log-lines")).not_to_contain_text("an info line")
        await expect(page.locator("#log-lines > li.level-info")).to_have_count(0)
        await save_screenshot(page, str(SHOTS / "run-filtered.png"))

        # Cancel from the button, after a confirmation (dismissed first: nothing happens); the
        # agent receives it and reports CANCELLED: live.
        await page.get_by_role("button", name="Cancel run").click()
        assert browser_page.dialogs == [CANCEL_QUESTION] and "cancel=" not in page.url
        browser_page.dialogs.clear()
        await page.evaluate("window.confirm = () => true")
        await page.get_by_role("button", name="Cancel run").click()
        await page.wait_for_url("**cancel=requested**")
        await expect(page.locator(".notice-cancel")).to_contain_text("Cancellation requested")
        await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
        reply = await agent.check_in()
        cancels = [b for b in map(action_body, reply.actions) if b.kind == "cancel_run"]
        assert [b.params["run_id"] for b in cancels] == [run.run_id]
        run.state = "CANCELLED"
        await agent.check_in([agent.update(run)], acked_actions=[cancels[0].action_id])
        await expect(page.locator("#run-status .state-badge")).to_have_text(
            "Cancelled", timeout=2000
        )
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "done")

        await _runs_list_and_screens(page, server, agent)
    assert browser_page.dialogs == []
    assert browser_page.problems == []


async def test_a_bad_runs_filter_value_is_shown_at_its_field_with_the_form_kept(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await RunAgent.enroll(server, channel, "web-01")
        failed = await agent.start_run("FAILED")
        await agent.start_run("SUCCEEDED")
    await browser_logged_in(server, page, "viewer")
    await page.goto(f"{server.web_url}/runs")
    rows = page.locator("#runs-body > tr")
    await expect(rows).to_have_count(2)

    await page.get_by_label("Failed", exact=True).check()
    # The agent select offers only known agents: a value the server refuses comes from a
    # stale or edited form, an id longer than any agent id here.
    bad = "x" * 65
    chooser = page.locator("#f-agent")
    await chooser.evaluate("(s, v) => s.add(new Option(v, v, true, true))", bad)
    async with page.expect_response(lambda r: "/runs?" in r.url) as sent:
        await page.get_by_role("button", name="Apply filters").click()
    assert (await sent.value).status == 400

    error = page.locator("#f-agent-error")
    await expect(error).to_have_text("agent: must be at most 64 characters")
    await expect(error).to_have_attribute("role", "alert")
    await expect(page.locator(".field", has=chooser).locator(".field-error")).to_have_count(1)
    await expect(chooser).to_have_attribute("aria-invalid", "true")
    await expect(chooser).to_have_attribute("aria-describedby", "f-agent-error")
    await expect(chooser).to_have_value(bad)  # the form as it was sent
    await expect(page.get_by_label("Failed", exact=True)).to_be_checked()
    await expect(rows).to_have_count(1)  # the other filter applied
    await expect(page.locator(f"#run-{failed.run_id}")).to_be_visible()
    await save_screenshot(page, str(SHOTS / "runs-refused.png"))

    # Choosing a listed agent sends a good form: the error goes.
    await chooser.select_option(agent.agent_id)
    async with page.expect_response(lambda r: "/runs?" in r.url) as sent:
        await page.get_by_role("button", name="Apply filters").click()
    assert (await sent.value).status == 200
    await expect(error).to_have_count(0)
    await expect(chooser).not_to_have_attribute("aria-invalid", "true")
    await expect(rows).to_have_count(1)
    assert browser_page.dialogs == []
    assert [r.split()[0] for r in browser_page.bad_responses] == ["400"]
    # The console's one complaint is that 400; no script failed on the refused page.
    assert browser_page.problems == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]


async def _runs_list_and_screens(page: Page, server: RunningServer, agent: RunAgent) -> None:
    await page.goto(f"{server.web_url}/runs?limit=2")
    rows = page.locator("#runs-body > tr")
    await expect(rows).to_have_count(2)
    await page.get_by_role("link", name="Load more").click()
    await expect(rows).to_have_count(4)
    assert "limit=2" in page.url and "before" not in page.url  # appended in place
    await page.get_by_role("link", name="Load more").click()
    await expect(rows).to_have_count(5)
    await expect(page.get_by_role("link", name="Load more")).to_have_count(0)
    await save_screenshot(page, str(SHOTS / "runs.png"))

    await page.goto(f"{server.web_url}/agents/{agent.agent_id}")
    await page.evaluate("window.confirm = () => true")  # "Run the migration on … now?"
    await page.get_by_role("button", name="Run migration now").click()
    await expect(page.locator(".notice-ok")).to_contain_text("Run requested")
    await save_screenshot(page, str(SHOTS / "agent.png"))
    await page.goto(f"{server.web_url}/")
    await expect(page.locator("h1")).to_have_text("Fleet overview")
    await save_screenshot(page, str(SHOTS / "overview.png"))
