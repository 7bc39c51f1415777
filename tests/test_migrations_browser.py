"""Issue 13 acceptance in a real browser (Debian's chromium via Playwright) against a real server
and a REAL agent process (``python -m agent --root ROOT run``) on a v1 host: an admin uploads the
sample spec (tests/agent_tests/specs/myapp.toml) on ``/migrations``, previews it on the host and
sees its diff (the password redacted), runs it, lands on the run page when the agent reports the
run, and watches the host move to version 3 on ``/migrations/myapp``; then reverts the run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from agent_tests.spec_testlib import PASSWORD, V1_INI
from agent_tests.spec_testlib import SAMPLE_PATH as SAMPLE
from playwright.async_api import Page, expect
from server_testlib import browser_logged_in, make_server_config, save_screenshot
from test_end_to_end import REPO, enrolled_agent
from test_runs_pages import start_with_settings

from server.app import RunningServer

if TYPE_CHECKING:
    from server_testlib import WatchedPage

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp")


@pytest.fixture
async def server(sqlite_db_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = make_server_config(sqlite_db_url, tmp_path, checkin_interval_seconds=1)
    running = await start_with_settings(config)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def agent_root(server: RunningServer, agent_base: Path) -> AsyncIterator[Path]:
    """An enrolled v1 host with a running ``flagpost-agent run`` daemon checking in fast."""
    root = agent_base / "myapp-host"
    ini = root / "etc" / "myapp" / "myapp.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text(V1_INI)
    await enrolled_agent(server, root)
    env = {
        **os.environ,
        "FLAGPOST_AGENT_STARTUP_JITTER_SECONDS": "0",
        "FLAGPOST_AGENT_CHECKIN_INTERVAL_SECONDS": "0.5",
    }
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "--root", str(root), "run",
        cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield root
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), timeout=20)


async def reload_until(page: Page, selector: str, text: str, timeout: float = 15.0) -> None:
    """Reload ``page`` until ``selector`` contains ``text`` (the spec page has no live updates)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        content = await page.locator(selector).all_inner_texts()
        if any(text in item for item in content):
            return
        if loop.time() > deadline:
            raise AssertionError(f"{selector} never showed {text!r}; last: {content}")
        await asyncio.sleep(0.5)
        await page.reload()


async def test_admin_uploads_previews_runs_and_reverts_a_spec(
    server: RunningServer, agent_root: Path, browser_page: WatchedPage
) -> None:
    page = browser_page.page
    await browser_logged_in(server, page, "admin", next_path="/migrations")
    await expect(page.get_by_role("link", name="Migrations")).to_have_attribute(
        "aria-current", "page"
    )

    # Upload the sample spec as a file.
    await page.set_input_files("#spec-file", str(SAMPLE))
    async with page.expect_navigation():
        await page.locator("#upload-submit").click()
    assert page.url.endswith("/migrations/myapp?revision=1&saved=new"), page.url
    await expect(page.locator("#saved-notice")).to_contain_text("Saved as revision 1")
    await expect(page.locator("#spec-source li")).to_have_count(
        len(SAMPLE.read_text().splitlines())
    )
    # The agent picks the spec up only with an action; wait for it to be listed as a choice.
    await page.locator("#preview-form input[name=agent]").first.check()
    async with page.expect_navigation():
        await page.locator("#preview-submit").click()
    assert "/migrations/myapp/previews?action=" in page.url

    # The preview page reloads itself until the host answered; its diff is coloured.
    await expect(page.locator("#preview-status")).to_have_attribute(
        "data-state", "done", timeout=15000
    )
    preview = page.locator("section.preview")
    await expect(preview.locator(".state-badge")).to_have_text("Changes planned")
    await expect(preview.locator(".diff-add").first).to_be_visible()
    await expect(preview.locator(".diff-del").first).to_be_visible()
    await expect(preview.locator(".diff-hunk").first).to_be_visible()
    await expect(preview).to_contain_text("address")
    await expect(preview).not_to_contain_text(PASSWORD)
    await save_screenshot(page, str(SHOTS / "migration-preview.png"))
    assert (agent_root / "etc" / "myapp" / "myapp.ini").read_text() == V1_INI  # nothing changed

    # Run it on the host: a "waiting for the agent" page, then the run page.
    await page.get_by_role("link", name="myapp").first.click()
    await expect(page.locator("#run-agent")).to_be_visible()
    await page.locator("#run-submit").click()  # dismissed by the fixture: nothing runs
    assert browser_page.dialogs == [
        "Run myapp revision 1 on the chosen host? It changes its files (a backup is kept)."
    ]
    browser_page.dialogs.clear()
    await page.evaluate("window.confirm = () => true")
    await page.locator("#run-submit").click()
    await page.wait_for_url("**/runs/*", timeout=15000)
    await expect(page.locator("#run-status .state-badge")).to_have_text("Succeeded", timeout=15000)
    await expect(page.locator("h1")).to_contain_text("Run")
    assert (agent_root / "etc" / "myapp" / "config.toml").exists()
    run_url = page.url

    # The host moves to version 3 on the spec page.
    await page.goto(f"{server.web_url}/migrations/myapp")
    await reload_until(page, "#spec-agents .spec-version", "3")
    await expect(page.locator("#spec-agents .spec-version")).to_contain_text("target")
    await save_screenshot(page, str(SHOTS / "migration.png"))

    # Revert from the run page (a succeeded spec run): the files go back to v1.
    await page.goto(run_url)
    await page.evaluate("window.confirm = () => true")  # "Revert this run? …"
    async with page.expect_navigation():
        await page.locator("#revert-button").click()
    await expect(page.locator(".notice-ok")).to_contain_text("Revert requested")
    ini = agent_root / "etc" / "myapp" / "myapp.ini"
    for _ in range(60):
        if ini.exists() and ini.read_text() == V1_INI:
            break
        await asyncio.sleep(0.25)
    assert ini.read_text() == V1_INI
    await page.goto(f"{server.web_url}/migrations")
    await expect(page.locator("#specs-table")).to_contain_text("myapp")
    await save_screenshot(page, str(SHOTS / "migrations.png"))
    assert browser_page.dialogs == []
    assert browser_page.problems == []
