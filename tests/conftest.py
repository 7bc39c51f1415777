"""Shared fixtures: real databases (SQLite and PostgreSQL) migrated by alembic, real servers.

Each test gets a fresh database cloned from a template that alembic migrated once per session
(a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL), so tests are isolated and
the schema always comes from the migrations, never ``create_all``.

PostgreSQL is found at ``FLAGPOST_TEST_PG_URL`` (default: postgres on 127.0.0.1:5432). When it is
unreachable its tests are skipped locally, but fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from server_testlib import CHROMIUM, CHROMIUM_ARGS, WatchedPage, make_server_config
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Dialog, Response

    from server.config import ServerConfig

PG_BASE_URL = os.environ.get("FLAGPOST_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
RUN_TAG = uuid.uuid4().hex[:8]


def _pg_reachable() -> bool:
    parts = urlsplit(PG_BASE_URL.replace("+asyncpg", ""))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return True
    except OSError:
        return False


def _pg_admin(*statements: str) -> None:
    """Run admin statements (CREATE/DROP DATABASE) on the maintenance database, in a thread
    with its own event loop so it is safe whatever loop pytest-asyncio is running."""
    import asyncpg

    dsn = PG_BASE_URL.replace("+asyncpg", "") + "/postgres"

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server.storage.schema import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    from server.storage.schema import upgrade

    if not _pg_reachable():
        message = f"PostgreSQL unreachable at {PG_BASE_URL}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL is required)")
        pytest.skip(message)
    name = f"flagpost_tpl_{RUN_TAG}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    upgrade(f"{PG_BASE_URL}/{name}")
    yield name
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, migrated database of ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        template: Path = request.getfixturevalue("_sqlite_template")
        path = tmp_path / "flagpost.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template_name: str = request.getfixturevalue("_pg_template")
    name = f"flagpost_t_{RUN_TAG}_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    try:
        yield f"{PG_BASE_URL}/{name}"
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def agent_base() -> Iterator[Path]:
    """A world-traversable temp dir for agent roots (pytest's tmp_path is 0700, closed to an
    agent that runs as ``nobody``)."""
    base = Path(tempfile.mkdtemp(prefix="flagpost-agents-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh alembic-migrated database, once on SQLite and once on PostgreSQL."""
    yield from fresh_database(request, request.param, tmp_path)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on ``db_url``, disposed after the test."""
    from server.storage.db import create_engine_for_url

    engine = create_engine_for_url(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated SQLite database (for tests that need only one backend)."""
    yield from fresh_database(request, "sqlite", tmp_path)


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An EMPTY (unmigrated) database URL on SQLite; PostgreSQL variant via ``empty_pg_url``."""
    yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty, unmigrated database on each backend (for alembic tests)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    if not _pg_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL unreachable at {PG_BASE_URL} (CI=true)")
        pytest.skip("PostgreSQL unreachable")
    name = f"flagpost_e_{RUN_TAG}_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_BASE_URL}/{name}"
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def server_config(db_url: str, tmp_path: Path) -> ServerConfig:
    """A ServerConfig on the fresh database (both backends), agents asked to check in every 1 s."""
    return make_server_config(db_url, tmp_path, checkin_interval_seconds=1)


@pytest.fixture
async def running_server(server_config) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    """A real server (gRPC + web on one loop) on ``server_config``; stopped afterwards."""
    from server.app import start_server

    server = await start_server(server_config)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def browser_page() -> AsyncIterator[WatchedPage]:
    """A page in Debian's chromium driven by Playwright (no browser download: the system one)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 1000})
            watched = WatchedPage(page)

            async def on_dialog(dialog: Dialog) -> None:
                watched.dialogs.append(dialog.message)
                await dialog.dismiss()

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    watched.problems.append(message.text)

            def on_response(response: Response) -> None:
                if response.status >= 400:
                    watched.bad_responses.append(f"{response.status} {response.url}")

            page.on("dialog", on_dialog)
            page.on("console", on_console)
            page.on("pageerror", lambda exc: watched.problems.append(str(exc)))
            page.on("response", on_response)
            yield watched
        finally:
            await browser.close()
