"""The input prompt in a real browser (Debian's chromium via Playwright) against a real server,
driven by a scripted gRPC agent: the prompt appears on an open run page without a reload when
the run starts waiting (labels escaped), submitting sends the answers, a wrong answer (the agent
asks again with an error) shows the error next to its field, and right answers let the run end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from playwright.async_api import expect
from runs_testlib import AgentClient, run_update
from server_testlib import browser_logged_in, make_server_config, save_screenshot
from test_runs_pages import XSS, start_with_settings

from flagpost.v1 import agent_pb2
from server.app import RunningServer

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser


def ask(request_id: str, error: str = "") -> agent_pb2.InputRequest:
    return agent_pb2.InputRequest(
        request_id=request_id,
        fields=[
            agent_pb2.InputField(
                name="database_password", label="Database password", secret=True, error=error
            ),
            agent_pb2.InputField(name="upstream_token", label=XSS, secret=True),
            agent_pb2.InputField(name="region", label="Region", secret=False),
        ],
    )


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_with_settings(make_server_config(sqlite_db_url, tmp_path))
    try:
        yield running
    finally:
        await running.stop()


async def test_prompt_appears_live_and_shows_the_agents_error(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    run_id, first, second = (str(uuid.uuid4()) for _ in range(3))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel)
        await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING)])
        await browser_logged_in(server, page, "admin", next_path=f"/runs/{run_id}")
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        prompt = page.locator("#input-prompt")
        await expect(prompt).to_be_hidden()

        # The run starts waiting: the form appears without a reload.
        await page.evaluate("window.__marker = 1")
        await agent.checkin(
            run_updates=[
                run_update(run_id, agent_pb2.RUN_STATE_AWAITING_INPUT, input_request=ask(first))
            ]
        )
        await expect(prompt).to_be_visible(timeout=3000)
        assert await page.evaluate("window.__marker") == 1  # same page: no reload
        password = page.locator("#input-database_password")
        await expect(password).to_have_attribute("type", "password")
        await expect(password).to_have_attribute("autocomplete", "new-password")
        await expect(page.locator("#input-region")).to_have_attribute("type", "text")
        await expect(page.locator("label[for=input-upstream_token]")).to_contain_text(XSS)
        assert await page.evaluate("window.__pwned") is None
        await expect(page.locator(".state-badge")).to_contain_text("Waiting for input")

        # Typing survives the page's live updates (the form is rebuilt only on a new ask).
        await password.fill("wrong-password")
        await page.locator("#input-upstream_token").fill("token-1")
        await agent.checkin(
            run_updates=[
                run_update(run_id, agent_pb2.RUN_STATE_AWAITING_INPUT, input_request=ask(first))
            ]
        )
        await page.wait_for_timeout(300)
        await expect(password).to_have_value("wrong-password")
        await page.locator("#input-region").fill("eu-west")
        async with page.expect_navigation():
            await page.locator("#input-submit").click()
        await expect(page.locator(".input-sent")).to_contain_text("waiting for the agent")
        await expect(page.locator("#input-form")).to_have_count(0)

        # The agent gets them, finds the password wrong and asks again with an error.
        reply = await agent.checkin()
        (action,) = reply.actions
        await agent.checkin(acknowledged_action_ids=[action.action_id])
        await agent.checkin(
            run_updates=[
                run_update(
                    run_id,
                    agent_pb2.RUN_STATE_AWAITING_INPUT,
                    input_request=ask(second, error="wrong password for database 'fleet'"),
                )
            ]
        )
        error = page.locator("#input-database_password-error")
        await expect(error).to_have_text("wrong password for database 'fleet'", timeout=3000)
        await expect(page.locator("#input-database_password")).to_have_attribute(
            "aria-describedby", "input-database_password-error"
        )
        await expect(page.locator("#input-database_password")).to_have_value("")

        # Right answers: sent, then the run resumes and ends; the prompt goes away live.
        await page.locator("#input-database_password").fill("right-password")
        await page.locator("#input-upstream_token").fill("token-1")
        await page.locator("#input-region").fill("eu-west")
        async with page.expect_navigation():
            await page.locator("#input-submit").click()
        await expect(page.locator(".input-sent")).to_be_visible()
        reply = await agent.checkin()
        (action,) = reply.actions
        await agent.checkin(
            acknowledged_action_ids=[action.action_id],
            run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING)],
        )
        await expect(prompt).to_be_hidden(timeout=3000)
        await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_SUCCEEDED)])
        await expect(page.locator(".state-badge")).to_contain_text("Succeeded", timeout=3000)
        await save_screenshot(page, "/tmp/run-input.png")
    assert browser_page.problems == [] and browser_page.dialogs == []


async def test_a_viewer_sees_the_prompt_without_a_form(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    run_id = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel)
        await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING)])
        await browser_logged_in(server, page, "viewer", next_path=f"/runs/{run_id}")
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        await agent.checkin(
            run_updates=[
                run_update(
                    run_id,
                    agent_pb2.RUN_STATE_AWAITING_INPUT,
                    input_request=ask(str(uuid.uuid4()), error="try again"),
                )
            ]
        )
        prompt = page.locator("#input-prompt")
        await expect(prompt).to_contain_text("An admin must provide", timeout=3000)
        await expect(prompt).to_contain_text("try again")
        await expect(page.locator("#input-form")).to_have_count(0)
    assert browser_page.problems == []
