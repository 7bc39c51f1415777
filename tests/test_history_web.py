"""The History page and its JSON twin on a real aiohttp server and real databases.

Each test gets a fresh alembic-migrated database (``db_url``: SQLite and PostgreSQL), seeded
through the backend's storage functions, and a real server on 127.0.0.1 port 0 built by
``setup_web`` on a minimal application (engine and sessions in a cleanup context, like
``server.app.create_app``).
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import markupsafe
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from server_testlib import logged_in_http, login_test_client
from sqlalchemy import func, select

from server import app_keys
from server.config import load_config
from server.domain import Category, EventStatus, EventType, HostFacts, NewEvent, severity_for
from server.services.health import DatabaseHealth
from server.storage.agents import create_agent
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.events import insert_events
from server.storage.models import UpdateEvent
from server.web import setup_web
from server.web.auth import SESSION_COOKIE, viewer
from server.web.format import relative_time
from server.web.history.views import error_items, outcome_label

BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
XSS_MESSAGE = "<script>window.__pwned=1</script>"
XSS_ERROR = '<img src=x onerror=alert(1)> & "quoted"'
XSS_SYSINFO = {"<b>key</b>": "<i>value</i><script>alert(2)</script>"}
AGENTS = {
    "00000000-0000-4000-8000-00000000000a": "web-01",
    "00000000-0000-4000-8000-00000000000b": "db-01",
    "00000000-0000-4000-8000-00000000000c": "cache-01",
}
READONLY_ERROR = "[Errno 13] Permission denied: '/etc/flagpost-legacy/agent.conf'"


# --------------------------------------------------------------------------- seeding


@dataclass(frozen=True)
class Seeded:
    """An event as seeded, with the id the database gave it."""

    id: int
    event: NewEvent
    hostname: str


def _event(
    i: int,
    agent_id: str,
    event_type: EventType,
    status: EventStatus,
    *,
    category: Category = Category.MIGRATION,
    message: str = "",
    error_message: str = "",
    error_detail: dict[str, Any] | None = None,
    system_info: dict[str, str] | None = None,
    run_id: str | None = None,
    migration_to: str | None = None,
) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.UUID(int=(0x0190 << 112) | (i + 1))),
        agent_id=agent_id,
        category=category,
        event_type=event_type.value,
        status=status,
        severity=severity_for(status),
        message=message or f"event number {i}",
        error_message=error_message,
        error_detail=error_detail or {},
        migration_from="1",
        migration_to=migration_to or ("2" if i % 2 else "3"),
        run_id=run_id,
        system_info=system_info or {"os": "Debian 12", "kernel": "6.1.0"},
        # Deliberately not monotonic in i, so time filters are independent of id order.
        occurred_at=BASE_TIME + timedelta(minutes=(i * 7) % 40, seconds=i),
    )


def sample_events() -> list[NewEvent]:
    """A deterministic fleet history: every type/status/category mix, plus special cases."""
    agent_ids = list(AGENTS)
    types = list(EventType)
    statuses = list(EventStatus)
    events = [
        _event(
            i,
            agent_ids[i % 3],
            types[i % 2],
            statuses[i % 5],
            category=Category.AGENT if i % 7 == 3 else Category.MIGRATION,
            run_id=str(uuid.UUID(int=1000 + i // 2)),
            error_message=f"step failed_{i}" if statuses[i % 5] is EventStatus.FAILED else "",
        )
        for i in range(30)
    ]
    n = len(events)
    events.append(
        _event(
            n,
            agent_ids[0],
            EventType.MIGRATION_EXECUTION,
            EventStatus.FAILED,
            message="Migration 1 → 2 failed: config directory is read-only",
            error_message=READONLY_ERROR,
            error_detail={
                "failing_step": "move_legacy_config",
                "file_path": "/etc/flagpost-legacy/agent.conf",
                "errno": 13,
                "errno_name": "EACCES",
                "exception_type": "PermissionError",
                "rollback": "succeeded",
                "backup_path": "/var/lib/flagpost/backups/run-7/agent.conf",
            },
            run_id="01900000-0000-7000-8000-0000000000ff",
            migration_to="2",
        )
    )
    events.append(
        _event(
            n + 1,
            agent_ids[1],
            EventType.MIGRATION_DETECTION,
            EventStatus.WARNING,
            message=XSS_MESSAGE,
            error_message=XSS_ERROR,
            error_detail={"failing_step": "<svg onload=alert(3)>"},
            system_info=XSS_SYSINFO,
        )
    )
    events.append(
        _event(
            n + 2,
            agent_ids[2],
            EventType.MIGRATION_EXECUTION,
            EventStatus.SUCCESS,
            message="100% done, key_renamed OK",
        )
    )
    return events


async def seed(db_url: str, events: Iterable[NewEvent] | None = None) -> list[Seeded]:
    """Store agents and events with the backend's storage functions; return them with ids."""
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    to_store = list(sample_events() if events is None else events)
    try:
        async with sessions() as session, session.begin():
            for agent_id, hostname in AGENTS.items():
                await create_agent(session, agent_id, HostFacts(hostname=hostname), BASE_TIME, 60)
        # One event per transaction keeps ids in list order on both databases.
        for event in to_store:
            async with sessions() as session, session.begin():
                await insert_events(session, [event], BASE_TIME + timedelta(hours=1))
        async with sessions() as session:
            result = await session.execute(select(UpdateEvent.event_id, UpdateEvent.id))
            ids = {event_id: id_ for event_id, id_ in result}
    finally:
        await engine.dispose()
    return [Seeded(ids[e.event_id], e, AGENTS[e.agent_id]) for e in to_store]


# --------------------------------------------------------------------------- server


def build_app(
    db_url: str,
    *,
    page_size: int = 50,
    extra: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """A minimal app wired like ``server.app.create_app``: config, engine, sessions, web."""
    config = load_config(
        env={},
        overrides={
            "database_url": db_url,
            "web_port": 0,
            "grpc_port": 0,
            "history_page_size": page_size,
        },
    )
    app = web.Application()
    app[app_keys.CONFIG] = config

    async def database(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine_for_url(db_url)
        app[app_keys.ENGINE] = engine
        app[app_keys.SESSIONS] = make_sessionmaker(engine)
        app[app_keys.HEALTH] = DatabaseHealth()
        yield
        await engine.dispose()

    app.cleanup_ctx.append(database)
    if extra is not None:
        extra(app)
    setup_web(app)
    return app


async def start_client(
    app: web.Application, role: str | None = "viewer"
) -> TestClient[web.Request, web.Application]:
    """A started TestClient on ``app``, logged in as a new user with ``role`` (None: not)."""
    server = TestServer(app, host="127.0.0.1", port=0)
    client = TestClient(server)
    await client.start_server()
    if role is not None:
        await login_test_client(client, role)
    return client


@pytest.fixture
async def seeded(db_url: str) -> list[Seeded]:
    return await seed(db_url)


@pytest.fixture
async def client(
    db_url: str, seeded: list[Seeded]
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await start_client(build_app(db_url))
    try:
        yield client
    finally:
        await client.close()


Client = TestClient[web.Request, web.Application]

# --------------------------------------------------------------------------- expectations


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def expected_ids(rows: list[Seeded], params: list[tuple[str, str]]) -> list[int]:
    """The History semantics, computed in Python over the seeded events."""
    values: dict[str, list[str]] = {}
    for key, value in params:
        values.setdefault(key, []).append(value)
    result = []
    for row in rows:
        e = row.event
        if values.get("migration_only") == ["1"] and e.category != Category.MIGRATION:
            continue
        if "severity" in values and e.severity.value not in values["severity"]:
            continue
        if "event_type" in values:
            outcome = f"{e.event_type}_{e.status.value}"
            if e.event_type not in values["event_type"] and outcome not in values["event_type"]:
                continue
        if "agent" in values and e.agent_id != values["agent"][0]:
            continue
        if "since" in values and e.occurred_at < _parse_time(values["since"][0]):
            continue
        if "until" in values and e.occurred_at > _parse_time(values["until"][0]):
            continue
        if "q" in values:
            needle = values["q"][0].strip().lower()
            haystack = [e.message, e.error_message, row.hostname, e.event_id, e.run_id or ""]
            if not any(needle in field.lower() for field in haystack):
                continue
        result.append(row.id)
    return sorted(result, reverse=True)


EVENT_ROW = re.compile(r'<li class="event [^"]*"\s+id="event-(\d+)"')


def html_row_ids(body: str) -> list[int]:
    return [int(m) for m in EVENT_ROW.findall(body)]


async def api_ids(client: Client, params: list[tuple[str, str]]) -> list[int]:
    resp = await client.get("/api/v1/events", params=[*params, ("limit", "200")])
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["next_before"] is None
    return [e["id"] for e in body["events"]]


async def html_ids(client: Client, params: list[tuple[str, str]]) -> list[int]:
    resp = await client.get("/history", params=[*params, ("limit", "200")])
    assert resp.status == 200, await resp.text()
    return html_row_ids(await resp.text())


# --------------------------------------------------------------------------- tests

FILTER_CASES: list[list[tuple[str, str]]] = [
    [],
    [("migration_only", "1")],
    [("severity", "error")],
    [("severity", "warning"), ("severity", "info")],
    [("event_type", "migration_detection")],
    [("event_type", "migration_execution_failed")],
    [("event_type", "migration_detection"), ("event_type", "migration_execution_partial")],
    [("agent", "00000000-0000-4000-8000-00000000000b")],
    [("agent", "no-such-agent")],
    [("since", "2026-03-01T12:20")],
    [("until", "2026-03-01T12:10:00Z")],
    [("since", "2026-03-01T13:05:00+01:00"), ("until", "2026-03-01T12:30")],
    [("q", "READ-ONLY")],
    [("q", "web-01")],
    [("q", "failed_1")],
    [("q", "00000000-0000-0000-0000-0000000003eb")],  # a run id
    [("q", str(uuid.UUID(int=(0x0190 << 112) | 5)))],  # an event id
    [("q", "100%")],
    [("q", "%")],
    [("q", "_")],
    [("q", "key_r")],
    [("q", "/etc/flagpost-legacy/")],
    [
        ("migration_only", "1"),
        ("severity", "error"),
        ("severity", "success"),
        ("event_type", "migration_execution"),
        ("agent", "00000000-0000-4000-8000-00000000000a"),
        ("since", "2026-03-01T12:05"),
    ],
]


async def test_each_filter_returns_exactly_the_right_rows(
    client: Client, seeded: list[Seeded]
) -> None:
    for params in FILTER_CASES:
        expected = expected_ids(seeded, params)
        assert await api_ids(client, params) == expected, params
        assert await html_ids(client, params) == expected, params
    # The cases must discriminate: not every case is "everything" or "nothing".
    sizes = {len(expected_ids(seeded, p)) for p in FILTER_CASES}
    assert len(sizes) > 5


async def test_sql_injection_looking_text_is_just_text(
    client: Client, seeded: list[Seeded], db_url: str
) -> None:
    for q in [
        "' OR 1=1 --",
        "%' OR '1'='1",
        "x'); DROP TABLE update_events; --",
        "\\",
        "\\%",
        '" OR ""="',
        "1; SELECT pg_sleep(5)",
    ]:
        params = [("q", q)]
        assert await api_ids(client, params) == expected_ids(seeded, params) == [], q
        assert await html_ids(client, params) == [], q
    # A literal match still works and the table is intact.
    assert await api_ids(client, [("q", "read-only")]) == expected_ids(seeded, [("q", "read-only")])
    assert len(await api_ids(client, [])) == len(seeded)


async def test_keyset_pagination_walks_every_row_once(client: Client, seeded: list[Seeded]) -> None:
    filters = [("migration_only", "1"), ("severity", "error"), ("severity", "success")]
    expected = expected_ids(seeded, filters)
    assert len(expected) > 7

    # JSON: follow next_before.
    walked: list[int] = []
    before: int | None = None
    pages = 0
    while True:
        params = [*filters, ("limit", "3")]
        if before is not None:
            params.append(("before", str(before)))
        body = await (await client.get("/api/v1/events", params=params)).json()
        assert len(body["events"]) <= 3
        walked.extend(e["id"] for e in body["events"])
        pages += 1
        before = body["next_before"]
        if before is None:
            break
    assert walked == expected
    assert pages == -(-len(expected) // 3)

    # HTML: follow the "Older events" links; every link keeps every filter.
    walked_html: list[int] = []
    url: str | None = "/history?migration_only=1&severity=error&severity=success&limit=3"
    while url is not None:
        resp = await client.get(url)
        body_html = await resp.text()
        walked_html.extend(html_row_ids(body_html))
        match = re.search(r'rel="next" href="([^"]+)"', body_html)
        url = html.unescape(match.group(1)) if match else None
        if url is not None:
            for key, value in [*filters, ("limit", "3")]:
                assert f"{key}={value}" in url
    assert walked_html == expected


async def test_json_twin_has_the_same_rows_and_fields(client: Client, seeded: list[Seeded]) -> None:
    resp = await client.get("/api/v1/events", params={"limit": "5"})
    body = await resp.json()
    page = await (await client.get("/history", params={"limit": "5"})).text()
    assert [e["id"] for e in body["events"]] == html_row_ids(page)
    assert body["next_before"] == body["events"][-1]["id"]
    newest = max(seeded, key=lambda s: s.id)
    first = body["events"][0]
    assert first["event_id"] == newest.event.event_id
    assert first["hostname"] == newest.hostname
    assert first["outcome"] == f"{newest.event.event_type}_{newest.event.status.value}"
    assert first["severity"] == newest.event.severity.value
    assert _parse_time(first["occurred_at"]) == newest.event.occurred_at


async def test_agent_supplied_markup_is_escaped(client: Client) -> None:
    resp = await client.get("/history", params={"limit": "200"})
    body = await resp.text()
    assert "<script>window.__pwned" not in body
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in body
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &#34;quoted&#34;" in body
    assert "<svg onload" not in body and "&lt;svg onload=alert(3)&gt;" in body
    assert "<b>key</b>" not in body and "&lt;b&gt;key&lt;/b&gt;" in body
    assert "<i>value</i>" not in body and "&lt;i&gt;value&lt;/i&gt;" in body
    # The only <script> tags on the page are ours: external files from /static, none inline.
    scripts = re.findall(r"<script[^>]*>", body)
    assert scripts and all(
        re.fullmatch(r'<script src="/static/[a-z_]+\.js\?v=[^"]+" defer>', tag) for tag in scripts
    ), scripts
    assert body.count("<script") == len(scripts)


async def test_expanded_detail_shows_the_failure(client: Client, seeded: list[Seeded]) -> None:
    failure = next(s for s in seeded if s.event.error_message == READONLY_ERROR)
    body = await (await client.get("/history", params={"q": "read-only"})).text()
    assert html_row_ids(body) == [failure.id]
    for text in [
        "Execution failed",
        "move_legacy_config",
        "EACCES (errno 13)",
        "PermissionError",
        "Rolled back successfully",
        "/var/lib/flagpost/backups/run-7/agent.conf",
        "1 → 2",
        "<code>01900000-0000-7000-8000-0000000000ff</code>",  # no such run: shown, not linked
        failure.event.event_id,
        str(markupsafe.escape(READONLY_ERROR)),
        "<details>",
        "Debian 12",
    ]:
        assert text in body, text


BAD_PARAMS: list[tuple[list[tuple[str, str]], str]] = [
    ([("severity", "fatal")], "severity"),
    ([("event_type", "reboot")], "event_type"),
    ([("since", "yesterday")], "since"),
    ([("until", "2026-13-01T00:00")], "until"),
    ([("since", "2026-03-02"), ("until", "2026-03-01")], "until"),
    ([("before", "abc")], "before"),
    ([("before", "0")], "before"),
    ([("before", "-5")], "before"),
    ([("before", str(2**63))], "before"),
    ([("limit", "0")], "limit"),
    ([("limit", "201")], "limit"),
    ([("limit", "1e3")], "limit"),
    ([("migration_only", "maybe")], "migration_only"),
    ([("q", "x" * 201)], "q"),
    ([("q", "a\x00b")], "q"),
    ([("agent", "a" * 65)], "agent"),
    ([("q", "one"), ("q", "two")], "q"),
]


async def test_bad_parameters_are_400_naming_the_parameter(client: Client) -> None:
    for params, name in BAD_PARAMS:
        resp = await client.get("/api/v1/events", params=params)
        assert resp.status == 400, (params, await resp.text())
        body = await resp.json()
        assert body["error"] == "invalid_argument"
        assert body["message"].startswith(f"{name}:"), (params, body)

        page = await client.get("/history", params=params)
        assert page.status == 400, params
        assert page.content_type == "text/html"
        text = await page.text()
        assert f"{name}:" in text
        assert "Traceback" not in text


async def test_security_headers_on_every_kind_of_response(client: Client) -> None:
    responses = [
        await client.get("/history"),
        await client.get("/api/v1/events"),
        await client.get("/static/style.css"),
        await client.get("/no-such-page"),
        await client.get("/api/v1/events", params={"limit": "0"}),
        await client.get("/healthz"),
        await client.get("/", allow_redirects=False),
    ]
    for resp in responses:
        csp = resp.headers.get("Content-Security-Policy", "")
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]:
            assert directive in csp, (resp.url, csp)
        assert "unsafe-inline" not in csp
        assert resp.headers.get("X-Content-Type-Options") == "nosniff"
        assert resp.headers.get("Referrer-Policy")
    assert responses[2].content_type == "text/css"
    not_found = responses[3]
    assert not_found.status == 404 and not_found.content_type == "text/html"
    wrong_method = await client.post("/api/v1/events")
    assert wrong_method.status == 405 and "GET" in wrong_method.headers["Allow"]
    assert (await wrong_method.json())["error"] == "method_not_allowed"
    api_404 = await client.get("/api/v1/nothing")
    assert api_404.status == 404
    assert (await api_404.json())["error"] == "not_found"


async def test_root_is_the_fleet_overview_and_healthz_is_ok(client: Client) -> None:
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 200 and "Fleet overview" in await resp.text()
    health = await client.get("/healthz")
    assert health.status == 200 and await health.json() == {"status": "ok"}


async def test_empty_states(db_url: str) -> None:
    client = await start_client(build_app(db_url))
    try:
        body = await (await client.get("/history")).text()
        assert "No events yet." in body and html_row_ids(body) == []
        body = await (await client.get("/history", params={"severity": "error"})).text()
        assert "No events match these filters." in body
        api = await (await client.get("/api/v1/events")).json()
        assert api == {"events": [], "next_before": None, "partial": False}
    finally:
        await client.close()


async def test_unreachable_database_is_503_and_unexpected_errors_hide_internals(
    tmp_path: Any, sqlite_db_url: str
) -> None:
    def boom_route(app: web.Application) -> None:
        @viewer
        async def boom(request: web.Request) -> web.StreamResponse:
            raise RuntimeError("secret internal detail /etc/shadow")

        app.router.add_get("/api/v1/boom", boom)
        app.router.add_get("/boom", boom)

    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'nope.db'}"
    client = await start_client(build_app(url), role=None)
    # a session cookie: the database must be asked (and found down) before any page is served
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: "s" * 43})
    try:
        health = await client.get("/healthz")
        assert health.status == 503
        assert (await health.json())["status"] == "unavailable"
        api = await client.get("/api/v1/events")
        assert api.status == 503
        assert (await api.json())["error"] == "unavailable"
        page = await client.get("/history")
        assert page.status == 503 and page.content_type == "text/html"
    finally:
        await client.close()
    # unexpected errors (a logged-in user on a working database) hide the internals
    client = await start_client(build_app(sqlite_db_url, extra=boom_route))
    try:
        boom = await client.get("/api/v1/boom")
        assert boom.status == 500
        assert await boom.json() == {"error": "internal", "message": "Internal server error."}
        boom_page = await client.get("/boom")
        text = await boom_page.text()
        assert boom_page.status == 500 and "secret internal detail" not in text
        assert "Content-Security-Policy" in boom_page.headers
    finally:
        await client.close()


# --------------------------------------------------------------------------- view models


def test_error_items_read_the_structured_detail() -> None:
    items = {
        i.label: i
        for i in error_items(
            {
                "failing_step": "move_legacy_config",
                "file_path": "/etc/x.conf",
                "errno": 13,
                "exception_type": "PermissionError",
                "line": 0,
                "rollback": "failed",
                "rollback_error": "disk full",
            }
        )
    }
    assert items["OS error"].value == "EACCES (errno 13)"  # name derived from the number
    assert items["Failing step"].value == "move_legacy_config"
    assert items["Rollback"].value == "Rollback FAILED" and items["Rollback"].tone == "bad"
    assert "Line" not in items  # 0 means "not a parse error"
    assert error_items({}) == ()
    parse = {
        i.label: i.value for i in error_items({"exceptionType": "ConfigParseError", "line": 7})
    }
    assert parse == {"Exception": "ConfigParseError", "Line": "7"}


def test_labels_and_relative_times() -> None:
    assert outcome_label("migration_detection", "success") == "Detection: migration needed"
    assert outcome_label("migration_execution", "failed") == "Execution failed"
    assert outcome_label("agent_restart", "success") == "Agent restart: success"
    now = BASE_TIME
    assert relative_time(now - timedelta(seconds=10), now) == "just now"
    assert relative_time(now - timedelta(minutes=1, seconds=5), now) == "1 minute ago"
    assert relative_time(now - timedelta(hours=5), now) == "5 hours ago"
    assert relative_time(now - timedelta(days=3), now) == "3 days ago"
    assert relative_time(now - timedelta(days=800), now) == "2 years ago"
    assert relative_time(now + timedelta(hours=1), now).startswith("in the future")


async def test_seeded_ids_follow_insertion_order(db_url: str) -> None:
    """Guards the fixture: ids are assigned in insertion order (the keyset cursor's basis)."""
    rows = await seed(db_url)
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    engine = create_engine_for_url(db_url)
    try:
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(UpdateEvent))).scalar()
        assert count == len(rows)
    finally:
        await engine.dispose()


async def test_the_real_server_serves_the_web(running_server: Any, db_url: str) -> None:
    """``server.app.start_server`` wires ``setup_web``: pages, API, health and headers."""
    await seed(db_url)
    async with logged_in_http(running_server, "viewer", base_url=True) as http:
        async with http.get("/history") as resp:
            assert resp.status == 200
            assert len(html_row_ids(await resp.text())) == len(sample_events())
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        async with http.get("/api/v1/events", params={"severity": "error"}) as resp:
            body = await resp.json()
            assert {e["severity"] for e in body["events"]} == {"error"}
        async with http.get("/api/v1/events", params={"limit": "500"}) as resp:
            assert resp.status == 400 and (await resp.json())["message"].startswith("limit:")
        async with http.get("/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
