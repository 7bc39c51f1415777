"""Helpers shared by the server-side tests (a uniquely named module: tests/ has no __init__
files, and both tests/conftest.py and tests/agent_tests/conftest.py are imported as ``conftest``,
so nothing should be imported from a conftest by name)."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.config import ServerConfig
from server.domain import Category, EventFilter, EventStatus, NewEvent, Severity

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (Playwright downloads no browser here)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if TYPE_CHECKING:
    from playwright.async_api import Page
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from server.app import RunningServer


def make_server_config(db_url: str, tmp_path: Path, **overrides: object) -> ServerConfig:
    """A ServerConfig for tests: ``db_url``, ports 0 (the OS picks), state in ``tmp_path``, no
    environment; ``overrides`` on top."""
    from server.config import load_config

    settings: dict[str, object] = {
        "database_url": db_url,
        "grpc_port": 0,
        "web_port": 0,
        "state_dir": tmp_path / "server-state",
        # Tests enroll many agents from 127.0.0.1; tests/test_rotation.py sets a limit to test it.
        "enroll_rate_per_minute": 0,
    }
    return load_config(env={}, overrides={**settings, **overrides})


@dataclass
class WatchedPage:
    """A chromium page and what went wrong on it: dialogs (an ``alert`` from injected script),
    console errors and page errors (CSP violations show up there), and HTTP error responses."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)


async def every_event_id(sessions: async_sessionmaker[AsyncSession], f: EventFilter) -> list[int]:
    """Every id the History returns for ``f``, page by page through its keyset cursor."""
    from server.services.history import list_events

    ids: list[int] = []
    while True:
        page = await list_events(sessions, f)
        ids.extend(e.id for e in page.events)
        if page.next_before_id is None:
            return ids
        f = replace(f, before_id=page.next_before_id)


async def sqlite_page_plan(engine: AsyncEngine, f: EventFilter) -> str:
    """SQLite's plan (``EXPLAIN QUERY PLAN`` details joined by " | ") of the last History page
    statement :func:`server.storage.history.query_events` ran for ``f``: the statement itself,
    recorded as it went to the database, with its parameters."""
    from sqlalchemy import event

    from server.storage import history
    from server.storage.db import make_sessionmaker

    ran: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        ran.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with make_sessionmaker(engine)() as session:
            await history.query_events(session, f)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    pages = [(sql, params) for sql, params in ran if "JOIN agents" in sql]
    assert pages, ran
    sql, params = pages[-1]
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
        return " | ".join(str(r[-1]) for r in rows)


def new_event(agent_id: str, occurred_at: datetime | None = None) -> NewEvent:
    """A valid, already-converted migration event (what ingest hands to storage)."""
    return NewEvent(
        event_id=str(uuid.uuid4()),
        agent_id=agent_id,
        category=Category.MIGRATION,
        event_type="migration_detection",
        status=EventStatus.SUCCESS,
        severity=Severity.SUCCESS,
        message="needs migration",
        error_message="",
        error_detail={},
        migration_from="1",
        migration_to="2",
        run_id=None,
        system_info={},
        occurred_at=occurred_at or datetime.now(UTC),
    )


# --- web login: every protected route needs a session ----------------------------


@dataclass(frozen=True)
class WebAccount:
    """A web user created for a test (``password`` is the plain text, for logging in)."""

    name: str
    password: str
    role: str


async def create_web_user(
    server: RunningServer | web.Application, role: str = "admin", name: str | None = None
) -> WebAccount:
    """Create a web user through the service layer (argon2 hash) on the database of ``server``
    (a running server or a started aiohttp application)."""
    from server import app_keys
    from server.services import users as users_service

    app = server if isinstance(server, web.Application) else server.app

    account = WebAccount(
        name=name or f"{role}-{secrets.token_hex(4)}",
        password=secrets.token_urlsafe(12),
        role=role,
    )
    await users_service.create_user(
        app[app_keys.SESSIONS], account.name, account.password, account.role
    )
    return account


_HIDDEN_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


async def login_http(
    http: aiohttp.ClientSession | TestClient[web.Request, web.Application],
    web_url: str,
    account: WebAccount,
    next_path: str = "/",
) -> str:
    """Log ``http`` in through the real form (GET /login for its CSRF cookie, POST /login);
    returns the session's CSRF token (read from the page's ``<meta name="csrf-token">``).
    ``http`` needs a cookie jar that keeps cookies for IP addresses
    (``aiohttp.CookieJar(unsafe=True)``)."""
    async with http.get(f"{web_url}/login") as reply:
        assert reply.status == 200, reply.status
        match = _HIDDEN_CSRF.search(await reply.text())
        assert match is not None
    form = {
        "name": account.name,
        "password": account.password,
        "next": next_path,
        "csrf_token": match.group(1),
    }
    async with http.post(f"{web_url}/login", data=form, allow_redirects=False) as reply:
        assert reply.status == 303, (reply.status, await reply.text())
    async with http.get(f"{web_url}/login?next=/", allow_redirects=True) as reply:
        meta = _META_CSRF.search(await reply.text())
        assert reply.status == 200 and meta is not None, reply.status
    return meta.group(1)


@asynccontextmanager
async def logged_in_http(
    server: RunningServer,
    role: str = "admin",
    *,
    base_url: bool = False,
    csrf_header: bool = True,
    account: WebAccount | None = None,
    **session_kwargs: Any,
) -> AsyncIterator[aiohttp.ClientSession]:
    """An ``aiohttp.ClientSession`` logged in as a new user with ``role`` on ``server``: the
    session cookie in its jar and (``csrf_header``) ``X-CSRF-Token`` sent with every request.
    ``base_url``: requests may use paths relative to ``server.web_url``."""
    account = account or await create_web_user(server, role)
    kwargs: dict[str, Any] = {"cookie_jar": aiohttp.CookieJar(unsafe=True), **session_kwargs}
    if base_url:
        kwargs["base_url"] = server.web_url
    async with aiohttp.ClientSession(**kwargs) as http:
        csrf = await login_http(http, "" if base_url else server.web_url, account)
        if csrf_header:
            http.headers["X-CSRF-Token"] = csrf
        yield http


async def login_browser(
    page: Page, web_url: str, account: WebAccount, next_path: str = "/history"
) -> None:
    """Log a Playwright page in through the login form; it ends on ``next_path``."""
    await page.goto(f"{web_url}/login?next={next_path}")
    await page.fill("#login-name", account.name)
    await page.fill("#login-password", account.password)
    async with page.expect_navigation():
        await page.click("#login-submit")
    assert page.url.startswith(f"{web_url}{next_path}"), page.url


async def browser_logged_in(
    server: RunningServer, page: Page, role: str = "admin", next_path: str = "/history"
) -> WebAccount:
    """Create a user with ``role`` and log ``page`` in as it (ends on ``next_path``)."""
    account = await create_web_user(server, role)
    await login_browser(page, server.web_url, account, next_path)
    return account


async def save_screenshot(page: Page, path: str | Path) -> None:
    """A full-page screenshot for the README's pictures, not an assertion. Chromium sometimes
    answers "Unable to capture screenshot" while a page settles after a navigation: one retry
    half a second later."""
    from playwright.async_api import Error

    try:
        await page.screenshot(path=str(path), full_page=True)
    except Error:
        await asyncio.sleep(0.5)
        await page.screenshot(path=str(path), full_page=True)


async def login_test_client(
    client: TestClient[web.Request, web.Application], role: str = "admin"
) -> WebAccount:
    """Log an aiohttp ``TestClient`` in as a new user with ``role``; its requests then carry
    the session cookie and ``X-CSRF-Token``."""
    account = await create_web_user(client.app, role)
    csrf = await login_http(client, "", account)
    client.session.headers["X-CSRF-Token"] = csrf
    return account


def action_body(action: Any, public_key: bytes | None = None) -> Any:
    """The ``ActionBody`` inside a signed ``Action`` from a real server; with ``public_key``
    (``app[app_keys.SIGNER].public_key_bytes()``) the signature is verified first (InvalidSignature
    otherwise)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from flagpost.v1 import agent_pb2

    if public_key is not None:
        Ed25519PublicKey.from_public_bytes(public_key).verify(action.signature, action.body)
    return agent_pb2.ActionBody.FromString(action.body)


# --------------------------------------------------------------------------- refused values

CONTROLS = frozenset({"input", "select", "textarea"})


class _Elements(HTMLParser):
    """A page's start tags in order (``attrs["in-select"]``: the name of an option's select),
    with the text of each ``p``."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.texts: dict[int, str] = {}
        self._p: int | None = None
        self._select = ""
        self.feed(body)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "select":
            self._select = values.get("name", "")
        elif tag == "option":
            values["in-select"] = self._select
        elif tag == "p":
            self._p = len(self.tags)
            self.texts[self._p] = ""
        self.tags.append((tag, values))

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._p = None
        elif tag == "select":
            self._select = ""

    def handle_data(self, data: str) -> None:
        if self._p is not None:
            self.texts[self._p] += data


def refused_value_error(body: str, name: str) -> str:
    """The error a page shows for its refused query parameter ``name`` (``server.web.refused``),
    without "name: ". Checked: it is a ``role="alert"`` message next to the field, i.e. every
    visible control named ``name`` is ``aria-invalid`` and described by it, and it follows the
    last of them before any other control. A parameter without a visible control (a hidden
    one, a cursor) has the form's one message."""
    page = _Elements(body)
    errors = {
        attrs.get("id", ""): i
        for i, (tag, attrs) in enumerate(page.tags)
        if tag == "p" and "field-error" in attrs.get("class", "").split()
    }
    controls = [
        i
        for i, (tag, attrs) in enumerate(page.tags)
        if tag in CONTROLS and attrs.get("name") == name and attrs.get("type") != "hidden"
    ]
    if controls:
        assert all(page.tags[i][1].get("aria-invalid") == "true" for i in controls), name
        last = controls[-1]
        error_id = page.tags[last][1].get("aria-describedby", "").split()[-1]
        assert error_id.endswith("-error") and error_id in errors, (name, error_id, errors)
        at = errors[error_id]
        between = page.tags[last + 1 : at]
        assert at > last and not any(tag in CONTROLS for tag, _ in between), name
    else:
        assert len(errors) == 1, (name, errors)
        [at] = errors.values()
    assert page.tags[at][1].get("role") == "alert"
    text = page.texts[at]
    assert text.startswith(f"{name}: "), (name, text)
    return text.removeprefix(f"{name}: ")


def form_values(body: str, name: str) -> list[str]:
    """What the page's form controls named ``name`` would send: the value of a text (or
    hidden) input, of each checked checkbox, and of a select's chosen option (the last one
    marked selected, as a browser picks, else the first)."""
    values: list[str] = []
    options: list[tuple[str, bool]] = []
    for tag, attrs in _Elements(body).tags:
        if tag == "input" and attrs.get("name") == name:
            if attrs.get("type") != "checkbox" or "checked" in attrs:
                values.append(attrs.get("value", ""))
        elif tag == "option" and attrs.get("in-select") == name:
            options.append((attrs.get("value", ""), "selected" in attrs))
    chosen = [value for value, selected in options if selected] or [v for v, _ in options[:1]]
    return values + chosen[-1:]
