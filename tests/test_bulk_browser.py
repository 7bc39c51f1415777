"""The fleet page's bulk actions in a real chromium: two hosts checked, a spec run on them after
a confirmation naming "2 hosts"; "all hosts the selector matches" with a selector revokes after its
confirmation; each shows how many were affected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from runs_testlib import AgentClient
from server_testlib import action_body, browser_logged_in, make_server_config

from server import app_keys
from server.app import RunningServer, start_server
from server.services import specs as specs_service

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser

SPEC_SAMPLE = Path(__file__).parent / "agent_tests" / "specs" / "myapp.toml"


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(make_server_config(sqlite_db_url, tmp_path))
    try:
        yield running
    finally:
        await running.stop()


async def test_run_a_spec_on_checked_hosts_and_revoke_a_filter(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    await specs_service.add_spec(
        server.app[app_keys.SESSIONS], SPEC_SAMPLE.read_text(), "toml", "tester"
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agents: dict[str, AgentClient] = {}
        for host, role in (("web-1", "web"), ("web-2", "web"), ("db-1", "db")):
            agent = await AgentClient.enroll(server, channel, host)
            agent.facts.labels.update({"role": role})
            await agent.checkin()
            agents[host] = agent
        await browser_logged_in(server, page, "admin", "/")
        await page.locator("#selector-count").filter(has_text="3 hosts match").wait_for()
        await page.locator("#bulk-filter-count").filter(has_text="3").wait_for()

        # two hosts by checkbox, run a spec
        await page.get_by_label("Select web-1").check()
        await page.get_by_label("Select db-1").check()
        assert await page.locator("#bulk-checked-count").inner_text() == "2"
        await page.locator("#bulk-action").select_option("run_spec")
        await page.locator("#bulk-spec").select_option("myapp")
        apply = page.locator("#bulk-apply")
        await apply.click()  # the fixture dismisses the confirmation: nothing happens
        assert browser_page.dialogs == ["Run myapp on 2 hosts?"]
        for host in ("web-1", "web-2", "db-1"):
            assert not (await agents[host].checkin()).actions
        await page.evaluate("window.confirm = function () { return true; }")
        await apply.click()
        result = page.locator("#bulk-result")
        await result.filter(has_text="myapp queued on 2 of 2 hosts.").wait_for()
        for host, taken in (("web-1", 1), ("web-2", 0), ("db-1", 1)):
            reply = await agents[host].checkin()
            assert [action_body(a).kind for a in reply.actions] == ["run_migration"] * taken

        # select all shown, then uncheck it again
        await page.locator("#bulk-all").check()
        assert await page.locator("#bulk-checked-count").inner_text() == "3"
        await page.locator("#bulk-all").uncheck()
        assert await page.locator("#bulk-checked-count").inner_text() == "0"
        assert await apply.is_disabled()

        # all hosts the selector matches: revoke role=web
        questions: list[str] = []
        await page.evaluate("window.confirm = function (q) { window.__asked = q; return true; }")
        await page.locator("#selector-input").fill("role=web")
        await page.locator("#selector-count").filter(has_text="2 hosts match").wait_for()
        await page.locator("#bulk-scope-filter").check()
        await page.locator("#bulk-filter-count").filter(has_text="2").wait_for()
        await page.locator("#bulk-action").select_option("revoke")
        assert await page.locator("#bulk-spec").is_hidden()
        await apply.click()
        await result.filter(has_text="2 of 2 hosts revoked.").wait_for()
        questions.append(await page.evaluate("window.__asked"))
        assert questions == ["Revoke 2 hosts? Their agents can no longer check in."]
        for host in ("web-1", "web-2"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await agents[host].checkin()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await agents["db-1"].checkin()
    assert browser_page.problems == [], browser_page.problems
    assert browser_page.bad_responses == [], browser_page.bad_responses
