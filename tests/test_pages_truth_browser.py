"""One truth for every state (issue 15 item 1) in a real browser (Debian's chromium via
Playwright) against a real server; runs come from a scripted gRPC agent, History events through
the storage functions (so both clocks can be set): the History's order matches the times it
shows and none of its run links 404; a cancelled run shows no error styling; the header count,
the runs list and the run page's notices follow the run without a reload; the ETA says
"estimating…" until there is data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from playwright.async_api import Page, expect
from runs_testlib import AgentClient, run_update, step
from server_testlib import browser_logged_in, make_server_config, new_event
from test_pages_truth import execution_failed, store_events
from test_runs_pages import WAITING_FOR_PASSWORD, start_with_settings

from flagpost.v1 import agent_pb2
from server.app import RunningServer
from server.domain import EventStatus, Severity

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser

WAITING = agent_pb2.RUN_STATE_AWAITING_INPUT


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_with_settings(make_server_config(sqlite_db_url, tmp_path))
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def agent(server: RunningServer) -> AsyncIterator[AgentClient]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield await AgentClient.enroll(server, channel, "web-01")


def waiting(run_id: str) -> agent_pb2.RunUpdate:
    return run_update(run_id, WAITING, input_request=WAITING_FOR_PASSWORD)


async def mark(page: Page) -> None:
    await page.evaluate("window.__same_page = 1")


async def same_page(page: Page) -> None:
    assert await page.evaluate("window.__same_page") == 1  # no reload happened


async def test_history_order_matches_the_times_shown_and_no_run_link_404s(
    server: RunningServer, agent: AgentClient, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    now = datetime.now(UTC).replace(microsecond=0)
    real, ghost = str(uuid.uuid4()), str(uuid.uuid4())
    await agent.checkin(run_updates=[run_update(real, agent_pb2.RUN_STATE_SUCCEEDED)])
    early = replace(new_event(agent.agent_id, now - timedelta(minutes=9)), run_id=real)
    up_to_date = replace(
        new_event(agent.agent_id, now - timedelta(hours=2)),  # the host's clock is behind
        status=EventStatus.NOT_NEEDED,
        severity=Severity.INFO,
        message="Detection: up to date",
        run_id=ghost,
    )
    await store_events(server, [early], now - timedelta(minutes=8))
    await store_events(server, [up_to_date], now - timedelta(minutes=1))

    await browser_logged_in(server, page, "viewer")
    rows = page.locator("li.event")
    await expect(rows).to_have_count(2)
    shown = await page.locator(".cell-time time").evaluate_all(
        "ts => ts.map(t => t.getAttribute('datetime'))"
    )
    times = [datetime.fromisoformat(t) for t in shown]
    assert times == sorted(times, reverse=True), times
    await expect(page.locator(".page-sub")).to_contain_text("newest received first")
    # The expanded row says which clock is which.
    await rows.first.locator("summary").click()
    detail = rows.first.locator(".event-detail")
    await expect(detail.locator(".fact-received")).to_contain_text("server clock")
    await expect(detail.locator(".fact-occurred")).to_contain_text("On the host")
    await expect(detail).to_contain_text(ghost)

    hrefs = await page.locator("a[href^='/runs/']").evaluate_all(
        "links => links.map(a => a.getAttribute('href'))"
    )
    assert f"/runs/{real}" in hrefs and f"/runs/{ghost}" not in hrefs
    for href in set(hrefs):
        response = await page.request.get(f"{server.web_url}{href}")
        assert response.status == 200, href
    assert browser_page.problems == [] and browser_page.dialogs == []


async def test_a_cancelled_run_shows_no_error_styling(
    server: RunningServer, agent: AgentClient, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    run_id = str(uuid.uuid4())
    await agent.checkin(run_updates=[waiting(run_id)])
    reason = "Migration 1 -> 2 cancelled while waiting for input; nothing was changed"
    await agent.checkin(
        run_updates=[run_update(run_id, agent_pb2.RUN_STATE_CANCELLED, error_message=reason)]
    )
    await store_events(
        server,
        [execution_failed(agent.agent_id, run_id, "RunCancelled", reason)],
        datetime.now(UTC),
    )
    await browser_logged_in(server, page, "viewer", next_path=f"/runs/{run_id}")
    status = page.locator("#run-status")
    await expect(status.locator(".state-badge")).to_have_text("Cancelled")
    await expect(status.locator(".state-badge")).to_have_class("state-badge state-cancelled")
    await expect(status.locator("#run-note")).to_have_text(reason)
    await expect(page.locator(".error-text, .state-failed")).to_have_count(0)

    await page.goto(f"{server.web_url}/runs")
    await expect(page.locator(f"#run-{run_id} .state-badge")).to_have_text("Cancelled")
    await page.goto(f"{server.web_url}/history")
    row = page.locator("li.event")
    await expect(row).to_have_count(1)
    await expect(row).to_have_class("event sev-cancelled cat-migration")
    await expect(row.locator(".sev-badge")).to_have_text("Cancelled")
    await expect(row.locator(".outcome")).to_have_text("Execution cancelled")
    await expect(page.locator(".sev-badge.sev-error")).to_have_count(0)
    assert browser_page.problems == [] and browser_page.dialogs == []


async def test_header_count_and_runs_list_follow_without_reload(
    server: RunningServer, agent: AgentClient, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    await agent.checkin(run_updates=[waiting(first)])
    await browser_logged_in(server, page, "admin", next_path="/runs")
    header = page.locator("#header-waiting")
    await expect(header).to_have_text("1 waiting for input")
    await mark(page)

    # A second run starts waiting: it appears in the list and the count goes up.
    await agent.checkin(run_updates=[waiting(second)])
    await expect(page.locator(f"#run-{second} .state-badge")).to_have_text(
        "Waiting for input", timeout=8000
    )
    await expect(header).to_have_text("2 waiting for input", timeout=8000)
    # One ends, the other resumes: their rows say so and the header count goes away.
    await agent.checkin(
        run_updates=[
            run_update(first, agent_pb2.RUN_STATE_CANCELLED),
            run_update(second, agent_pb2.RUN_STATE_RUNNING),
        ]
    )
    await expect(page.locator(f"#run-{first} .state-badge")).to_have_text("Cancelled", timeout=8000)
    await expect(page.locator(f"#run-{second} .state-badge")).to_have_text("Running", timeout=8000)
    await expect(header).to_have_count(0, timeout=8000)
    await same_page(page)
    assert browser_page.problems == [] and browser_page.dialogs == []


async def test_run_page_notices_go_when_the_outcome_arrives(
    server: RunningServer, agent: AgentClient, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    asked, running = str(uuid.uuid4()), str(uuid.uuid4())
    await agent.checkin(run_updates=[waiting(asked)])
    await browser_logged_in(server, page, "admin", next_path=f"/runs/{asked}")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

    # Answers sent: the notice stays while the agent has not taken them ...
    await page.locator("#input-database_password").fill("s3cret")
    async with page.expect_navigation():
        await page.locator("#input-submit").click()
    notice = page.locator("#page-notice")
    await expect(notice).to_contain_text("Answers sent, waiting for the agent")
    await mark(page)
    # ... and goes once the agent took them and the run moved on.
    reply = await agent.checkin()
    (action,) = reply.actions
    await agent.checkin(
        acknowledged_action_ids=[action.action_id],
        run_updates=[run_update(asked, agent_pb2.RUN_STATE_RUNNING)],
    )
    await expect(notice).to_have_count(0, timeout=5000)
    await expect(page.locator("#run-status .state-badge")).to_have_text("Running")
    await same_page(page)

    # Cancellation requested: the notice goes when the run ends.
    await agent.checkin(run_updates=[run_update(running, agent_pb2.RUN_STATE_RUNNING)])
    await page.goto(f"{server.web_url}/runs/{running}")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await page.evaluate("window.confirm = () => true")  # "Cancel this run? …"
    await page.get_by_role("button", name="Cancel run").click()
    await page.wait_for_url("**cancel=requested**")
    await expect(notice).to_contain_text("Cancellation requested")
    await mark(page)
    await agent.checkin(run_updates=[run_update(running, agent_pb2.RUN_STATE_CANCELLED)])
    await expect(page.locator("#run-status .state-badge")).to_have_text("Cancelled", timeout=5000)
    await expect(notice).to_have_count(0)
    await expect(page.locator(".notice-cancel")).not_to_contain_text("Cancellation requested")
    await same_page(page)
    assert browser_page.problems == [] and browser_page.dialogs == []


async def test_eta_says_estimating_before_there_is_data(
    server: RunningServer, agent: AgentClient, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    run_id = str(uuid.uuid4())
    await agent.checkin(
        run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING, steps_total=3)]
    )
    await browser_logged_in(server, page, "viewer", next_path=f"/runs/{run_id}")
    eta = page.locator("#run-status .run-eta")
    await expect(eta).to_have_text("estimating…")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await mark(page)
    # The first step is done: now there is something to estimate from, live.
    await agent.checkin(
        run_updates=[
            run_update(
                run_id,
                agent_pb2.RUN_STATE_RUNNING,
                steps_total=3,
                steps_done=1,
                steps=[step(0, "move_legacy_config", "succeeded", duration_ms=30_000)],
            )
        ]
    )
    await expect(eta).to_have_text("about 1 min 00 s left (from this run's steps so far)")
    await same_page(page)
    assert browser_page.problems == [] and browser_page.dialogs == []
