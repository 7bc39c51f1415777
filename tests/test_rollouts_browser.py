"""Rollouts in a real chromium against a real server (its scheduler running): an admin creates a
rollout from the form (the live host count and the summary update while typing), lands on its
page, agents (real gRPC clients) take its actions and report failed runs, and the page, without
a reload, shows the scheduler's HALTED and the wave's failure-rate bar past its gate; then the
admin resumes with a reason and aborts through the buttons, each after a confirmation naming
the hosts it affects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from agent_tests.spec_testlib import SAMPLE
from playwright.async_api import expect
from rollouts_testlib import answer_until, until_state
from runs_testlib import AgentClient
from server_testlib import browser_logged_in, make_server_config, save_screenshot

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer, start_server
from server.domain import RolloutState
from server.services import specs as specs_service

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp")
XSS = "<script>window.__pwned=1</script>"
# Answers "yes" to the confirmations, remembering each question across the form post.
CONFIRM = """() => {
  window.confirm = function (text) {
    var asked = JSON.parse(sessionStorage.getItem("asked") || "[]");
    asked.push(text);
    sessionStorage.setItem("asked", JSON.stringify(asked));
    return true;
  };
}"""
ASKED = """() => JSON.parse(sessionStorage.getItem("asked") || "[]")"""


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    # The default check-in interval: the agents stay online (selectable) for the whole test.
    config = make_server_config(sqlite_db_url, tmp_path)
    running = await start_server(config)
    try:
        yield running
    finally:
        await running.stop()


async def test_create_watch_halt_resume_and_abort(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    await specs_service.add_spec(server.app[app_keys.SESSIONS], SAMPLE, "toml", "alice")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agents = []
        for i, role in enumerate(("web", "web", "web", "web", "db")):
            agent = await AgentClient.enroll(server, channel, f"{role}-{i}")
            agent.facts.labels.update({"env": "prod", "role": role})
            await agent.checkin()
            agents.append(agent)
        web = agents[:4]

        await browser_logged_in(server, page, "admin", "/rollouts")
        await expect(page.get_by_role("link", name="Rollouts")).to_have_attribute(
            "aria-current", "page"
        )
        async with page.expect_navigation():
            await page.locator("#new-rollout").click()
        await expect(page.locator("#rollout-spec-id")).to_have_value("myapp")
        count = page.locator("#selector-count")
        summary = page.locator("#rollout-summary")
        await expect(count).to_have_text("5 hosts match")
        await expect(summary).to_contain_text(
            "5 hosts in 3 waves: 1 (1 host), then 10 % (0 hosts), then all"
        )
        await expect(summary).to_contain_text("halts at the first failure")

        await page.locator("#selector-input").press_sequentially("role=web", delay=10)
        await expect(count).to_have_text("4 hosts match")
        await expect(page.locator("#selector-hosts")).to_have_text("web-0, web-1, web-2, web-3")
        await page.locator("#rollout-waves").fill("1, 100%")
        await page.locator("#rollout-max-failure-rate").fill("5%")
        await expect(summary).to_have_text(
            "4 hosts in 2 waves: 1 (1 host), then all; halts when more than 5 % of a wave fails."
        )
        await save_screenshot(page, str(SHOTS / "rollout-new.png"))
        async with page.expect_navigation():
            await page.locator("#rollout-submit").click()
        assert "/rollouts/" in page.url and not page.url.endswith("/new"), page.url
        await expect(page.locator("#rollout-state")).to_have_text("RUNNING")
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        await page.evaluate("window.__sameDocument = true")

        # The first wave's host fails; the scheduler halts the rollout; the page follows.
        await answer_until(web, agent_pb2.RUN_STATE_FAILED, error=f"convert: {XSS}")
        rollout_id = page.url.rsplit("/", 1)[1]
        await until_state(server, rollout_id, RolloutState.HALTED)
        await expect(page.locator("#rollout-state")).to_have_text("HALTED")
        assert await page.evaluate("window.__sameDocument") is True  # no reload
        bar = page.locator("#wave-1-bar")
        await expect(bar).to_have_attribute("data-breached", "true")
        await expect(bar).to_have_class("rate-bar rate-bar-breached")
        value = float(await bar.get_attribute("aria-valuenow") or "0")
        gate = float(await bar.get_attribute("data-gate") or "1")
        assert value == 100.0 and gate == 0.05 and value > gate * 100
        wave1 = page.locator("#wave-1")
        await expect(wave1.locator('[data-state="failed"]')).to_have_text("1")
        await expect(page.locator("#rollout-hosts .host-state-failed")).to_have_count(1)
        await expect(page.locator("#rollout-hosts .error-text")).to_have_text(f"convert: {XSS}")
        await expect(page.locator("#rollout-reason")).to_contain_text("beyond its gate")
        await expect(page.locator("#rollout-transitions li")).to_have_count(2)
        await expect(page.locator("#pause-form")).to_be_hidden()
        await expect(page.locator("#resume-form")).to_be_visible()
        assert await page.locator("#resume-reason").evaluate("el => el.required") is True
        assert await page.evaluate("window.__pwned") is None
        await save_screenshot(page, str(SHOTS / "rollout-halted.png"))

        # Abort, dismissed: the fixture answers "no" to the confirmation; nothing changes.
        await page.locator("#abort-button").click()
        assert browser_page.dialogs == [
            "Abort the rollout? 3 hosts not started yet will be skipped; started runs finish."
        ]
        await expect(page.locator("#rollout-state")).to_have_text("HALTED")

        # Resume with a reason, confirmed: the gate of wave 1 is overridden.
        await page.evaluate(CONFIRM)
        await page.locator("#resume-reason").fill("web-0 is known bad")
        async with page.expect_navigation():
            await page.locator("#resume-button").click()
        await expect(page.locator("#rollout-state")).to_have_text("RUNNING")
        assert await page.evaluate(ASKED) == [
            "Resume the rollout? 3 hosts not started yet may start, overriding the halted wave's "
            "gate."
        ]
        await expect(page.locator("#rollout-transitions")).to_contain_text(
            "gate of wave 1 overridden by"
        )
        await expect(page.locator("#wave-2 [data-state='pending']")).to_have_text("3")

        # Abort, confirmed: the three hosts not started are skipped.
        await page.evaluate(CONFIRM)
        async with page.expect_navigation():
            await page.locator("#abort-button").click()
        assert (await page.evaluate(ASKED))[1:] == [
            "Abort the rollout? 3 hosts not started yet will be skipped; started runs finish."
        ]
        await expect(page.locator("#rollout-state")).to_have_text("ABORTED")
        await expect(page.locator("#wave-2 [data-state='skipped']")).to_have_text("3")
        await expect(page.locator("#abort-form")).to_be_hidden()
        await expect(page.locator("#revert-form")).to_be_visible()

        await page.goto(f"{server.web_url}/rollouts")
        await expect(page.locator(f"#rollout-{rollout_id}")).to_contain_text("ABORTED")
        await save_screenshot(page, str(SHOTS / "rollouts.png"))
    assert browser_page.problems == []
    assert browser_page.bad_responses == []
