"""Every page of a small but varied fleet, as an admin: a crawler follows every same-origin link
from the fleet page and none answers an error (no dead links); in chromium at a 390 px wide
viewport no page's document is wider than the viewport, and a dark system setting gets the dark
theme (issue 15).

The fleet: agents that checked in with detections, executions (succeeded, failed) and runs in
every state (succeeded with steps and logs, failed, cancelled, waiting for input), a migration
spec, a halted rollout, a webhook.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo

import grpc
import pytest
from agent_tests.spec_testlib import SAMPLE
from runs_testlib import AgentClient, log_line, run_update, step, ts
from server_testlib import (
    CHROMIUM,
    CHROMIUM_ARGS,
    browser_logged_in,
    logged_in_http,
    make_server_config,
)

from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer, start_server
from server.services import rollouts as rollouts_service
from server.services import specs as specs_service
from server.services import webhooks as webhooks_service

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser

MAX_PAGES = 400
NARROW = 390
# Links that are not pages to follow: logging out ends the crawl's session; live streams never end.
SKIP_PATHS = ("/logout",)
SKIP_SUFFIXES = ("/stream",)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"a": "href", "link": "href", "script": "src", "img": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.hrefs.append(value)


def links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.hrefs


def event(run_id: str, kind: int, status: int, message: str, error: str = "") -> Any:
    return agent_pb2.MigrationEvent(
        event_id=uuid7_str(),
        event_type=kind,
        status=status,
        message=message,
        error_message=error,
        occurred_at=ts(datetime.now(UTC)),
        run_id=run_id,
        migration_from="1",
        migration_to="4",
    )


async def seed(server: RunningServer) -> None:
    sessions = server.app[app_keys.SESSIONS]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        states = {
            "web-ok": agent_pb2.RUN_STATE_SUCCEEDED,
            "web-bad": agent_pb2.RUN_STATE_FAILED,
            "db-cancelled": agent_pb2.RUN_STATE_CANCELLED,
            "db-waiting": agent_pb2.RUN_STATE_AWAITING_INPUT,
        }
        for hostname, state in states.items():
            agent = await AgentClient.enroll(server, channel, hostname)
            agent.facts.labels.update({"env": "prod", "role": hostname.split("-")[0]})
            run_id = str(uuid.uuid4())
            extra: dict[str, Any] = {}
            if state == agent_pb2.RUN_STATE_AWAITING_INPUT:
                extra["input_request"] = agent_pb2.InputRequest(
                    request_id=str(uuid.uuid4()),
                    fields=[
                        agent_pb2.InputField(name="db_password", label="DB password", secret=True)
                    ],
                )
            update = run_update(
                run_id,
                state,
                steps=[step(0, "v1_to_v2", "succeeded", 12), step(1, "v2_to_v3", "pending")],
                **extra,
            )
            failed = state == agent_pb2.RUN_STATE_FAILED
            await agent.checkin(
                run_updates=[update],
                log_lines=[log_line(run_id, seq) for seq in range(1, 30)],
                events=[
                    event(  # names a run the agent never reported: no link may lead there
                        str(uuid.uuid4()),
                        agent_pb2.EVENT_TYPE_MIGRATION_DETECTION,
                        agent_pb2.EVENT_STATUS_NOT_NEEDED,
                        "Detection: up to date",
                    ),
                    event(
                        run_id,
                        agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION,
                        agent_pb2.EVENT_STATUS_FAILED if failed else agent_pb2.EVENT_STATUS_SUCCESS,
                        "Migration 1 -> 4 failed" if failed else "Config migrated 1 -> 4",
                        "PermissionError [EACCES] /etc/aggregator/agent.conf" if failed else "",
                    ),
                ],
            )
    await specs_service.add_spec(sessions, SAMPLE, "toml", "alice")
    await rollouts_service.create_rollout(
        sessions, server.app[app_keys.CONFIG], "myapp", "alice", waves=["1", "100%"]
    )
    await webhooks_service.add_webhook(
        sessions,
        server.app[app_keys.WEBHOOK_SECRETS],
        "http://127.0.0.1:9/hook",
        ["rollout.halted"],
        "alice",
    )


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(make_server_config(sqlite_db_url, tmp_path))
    try:
        await seed(running)
        yield running
    finally:
        await running.stop()


async def crawl(server: RunningServer) -> tuple[list[str], list[str]]:
    """Every same-origin URL reachable from ``/`` (HTML pages, their scripts and styles): the
    HTML pages, and the failures as ``status URL (linked from PAGE)``."""
    origin = urlsplit(server.web_url)
    seen = {"/"}
    queue = [("/", "")]
    pages: list[str] = []
    failures: list[str] = []
    async with logged_in_http(server, "admin") as http:
        while queue and len(seen) < MAX_PAGES:
            path, referrer = queue.pop(0)
            async with http.get(server.web_url + path, allow_redirects=True) as response:
                body = await response.read()
                kind = response.headers.get("Content-Type", "")
                if response.status >= 400:
                    failures.append(f"{response.status} {path} (linked from {referrer or '-'})")
                    continue
            if not kind.startswith("text/html"):
                continue
            pages.append(path)
            for href in links(body.decode("utf-8", "replace")):
                target = urlsplit(urljoin(server.web_url + path, href))
                if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
                    continue
                url = target.path + (f"?{target.query}" if target.query else "")
                if target.path in SKIP_PATHS or target.path.endswith(SKIP_SUFFIXES):
                    continue
                if url not in seen:
                    seen.add(url)
                    queue.append((url, path))
    return pages, failures


def _shape(path: str) -> str:
    """A page's route shape: its ids replaced, its query left out."""
    parts = urlsplit(path).path.split("/")
    return "/".join("ID" if len(p) >= 32 or p.isdigit() else p for p in parts)


async def test_no_link_answers_an_error_and_no_page_is_wider_than_390px(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    pages, failures = await crawl(server)
    assert not failures, "\n".join(failures)
    shapes = {_shape(p) for p in pages}
    for expected in ("/", "/agents/ID", "/history", "/runs", "/runs/ID", "/migrations",
                     "/migrations/myapp", "/rollouts", "/rollouts/new", "/rollouts/ID",
                     "/webhooks"):  # fmt: skip
        assert expected in shapes, (expected, sorted(shapes))

    page = browser_page.page
    await page.set_viewport_size({"width": NARROW, "height": 800})
    wide: list[str] = []
    await page.goto(server.web_url + "/login")
    if await page.evaluate("document.documentElement.scrollWidth") > NARROW:
        wide.append("/login")
    await browser_logged_in(server, page, "admin", "/")
    one_per_shape: dict[str, str] = {}
    for path in [*pages, f"/runs/{uuid.uuid4()}"]:  # the last: the 404 page
        one_per_shape.setdefault(_shape(path) + ("?" if "?" in path else ""), path)
    for path in one_per_shape.values():
        await page.goto(server.web_url + path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        if width > NARROW:
            culprits = await page.evaluate(
                """(limit) => Array.from(document.querySelectorAll('body *'))
                    .filter(e => e.getBoundingClientRect().right > limit + 1)
                    .slice(0, 3).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                    + (e.className && typeof e.className === 'string'
                       ? '.' + e.className.split(' ').join('.') : ''))""",
                NARROW,
            )
            wide.append(f"{path}: {width} px ({', '.join(culprits)})")
    assert not wide, "\n".join(wide)

    # A dark system setting gets the dark theme: dark surfaces, light text.
    await page.emulate_media(color_scheme="dark")
    await page.goto(server.web_url + "/runs")
    colours = await page.evaluate(
        """() => [document.body, document.querySelector('.data-table thead th')]
            .map(e => getComputedStyle(e)).map(c => [c.backgroundColor, c.color])"""
    )
    for background, text in colours:
        assert _brightness(background) < 60 < 160 < _brightness(text), colours


def _brightness(rgb: str) -> float:
    """The mean channel of a CSS ``rgb(r, g, b)`` value (0 black, 255 white)."""
    channels = [float(v) for v in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    return sum(channels) / 3


async def test_times_show_in_the_viewers_zone_with_utc_on_hover(server: RunningServer) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(timezone_id="Asia/Tokyo")
            page = await context.new_page()
            await browser_logged_in(server, page, "viewer", "/history")
            first = page.locator(".cell-time time").first
            await first.wait_for()
            utc = await first.get_attribute("title")
            assert utc is not None and utc.endswith(" UTC"), utc
            shown = datetime.strptime(utc, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
            tokyo = shown.astimezone(ZoneInfo("Asia/Tokyo"))
            assert await first.inner_text() == f"{tokyo:%Y-%m-%d %H:%M:%S} GMT+9"
            assert "Asia/Tokyo" in await page.locator("#footer-zone").inner_text()
        finally:
            await browser.close()


async def test_copy_buttons_put_ids_and_errors_on_the_clipboard(server: RunningServer) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            await context.grant_permissions(["clipboard-read", "clipboard-write"])
            page = await context.new_page()
            await browser_logged_in(server, page, "viewer", "/")
            await page.locator("a", has_text="web-bad").first.click()
            agent_id = page.url.rsplit("/", 1)[1]
            copy = page.get_by_role("button", name="Copy agent id")
            await copy.click()
            await (
                page.get_by_role("button", name="Copy agent id", exact=True)
                .filter(has_text="Copied")
                .wait_for()
            )
            assert await page.evaluate("navigator.clipboard.readText()") == agent_id
            await page.goto(server.web_url + "/history?severity=error")
            await page.locator("li.event summary").first.click()
            await page.get_by_role("button", name="Copy error message").first.click()
            copied = await page.evaluate("navigator.clipboard.readText()")
            assert copied == "PermissionError [EACCES] /etc/aggregator/agent.conf"
        finally:
            await browser.close()


async def test_fleet_affecting_buttons_ask_first(
    server: RunningServer, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    await browser_logged_in(server, page, "admin", "/")
    await page.locator("a", has_text="web-ok").first.click()
    agent_url = page.url
    await page.get_by_role("button", name="Run migration now").click()  # dismissed
    assert browser_page.dialogs == ["Run the migration on web-ok now?"]
    assert page.url == agent_url and await page.locator(".notice-ok").count() == 0
    await page.goto(server.web_url + "/webhooks")
    await page.get_by_role("button", name="Remove").click()  # dismissed: the webhook stays
    assert browser_page.dialogs[-1] == (
        "Remove the webhook http://127.0.0.1:9/hook? Its delivery log goes with it."
    )
    assert await page.get_by_role("button", name="Remove").count() == 1
