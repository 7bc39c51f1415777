"""Web login, sessions, CSRF, roles and the start-up route check.

Real servers on real databases (both backends where a database is involved); every request goes
over HTTP to the server of the ``running_server`` fixture or one started here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import grpc
import pytest
from aiohttp import web
from runs_testlib import AgentClient, run_update, ts
from server_testlib import (
    WebAccount,
    action_body,
    create_web_user,
    logged_in_http,
    login_http,
    make_server_config,
)
from sqlalchemy import func, select, update

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer, create_app, start_server
from server.services import users as users_service
from server.storage.models import PendingActionRow, WebSession, WebUser
from server.web.auth import (
    CSRF_ERROR,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    StartupCheckError,
    access_of,
    admin,
    check_routes,
    csrf_token_for,
    public,
    safe_next,
)
from server.web.routes import PUBLIC_ROUTES

HIDDEN_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1


async def login_form(http: aiohttp.ClientSession, base: str) -> str:
    """GET /login: the login CSRF cookie is set; returns the form's token."""
    async with http.get(f"{base}/login") as reply:
        assert reply.status == 200
        assert "no-store" in reply.headers["Cache-Control"]
        match = HIDDEN_CSRF.search(await reply.text())
        assert match is not None
        return match.group(1)


async def post_login(
    http: aiohttp.ClientSession,
    base: str,
    name: str,
    password: str,
    next_path: str = "/history",
    csrf: str | None = None,
) -> aiohttp.ClientResponse:
    token = csrf if csrf is not None else await login_form(http, base)
    form = {"name": name, "password": password, "next": next_path, "csrf_token": token}
    reply = await http.post(f"{base}/login", data=form, allow_redirects=False)
    await reply.read()
    return reply


def set_cookie(reply: aiohttp.ClientResponse, name: str) -> Any:
    for header in reply.headers.getall("Set-Cookie", []):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        if name in cookie:
            return cookie[name]
    return None


async def count(server: RunningServer, model: Any) -> int:
    async with server.app[app_keys.SESSIONS]() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def session_hashes(server: RunningServer) -> list[str]:
    async with server.app[app_keys.SESSIONS]() as session:
        return list((await session.scalars(select(WebSession.token_hash))).all())


# --- login ----------------------------------------------------------------------------------


async def test_login_opens_a_session_with_safe_cookie_flags(running_server: RunningServer) -> None:
    server = running_server
    account = await create_web_user(server, "admin")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        reply = await post_login(http, server.web_url, account.name, account.password, "/runs")
        assert reply.status == 303 and reply.headers["Location"] == "/runs"
        cookie = set_cookie(reply, SESSION_COOKIE)
        assert cookie is not None
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/"
        assert cookie["secure"] == ""  # plain HTTP here; see the TLS test
        assert int(cookie["max-age"]) == server.app[app_keys.CONFIG].session_ttl_hours * 3600
        token = cookie.value
        assert len(token) >= 43  # 256 bits, url-safe base64
        # Only the SHA-256 of the cookie value is stored.
        assert await session_hashes(server) == [hashlib.sha256(token.encode()).hexdigest()]
        # The page now knows the user: name, role, a CSRF token bound to this session.
        async with http.get(f"{server.web_url}/history") as page:
            body = await page.text()
        assert page.status == 200
        assert f'{account.name} <span class="role-badge role-admin">admin</span>' in body
        assert f'<meta name="csrf-token" content="{csrf_token_for(token)}">' in body
        assert 'id="logout-form"' in body
    async with server.app[app_keys.SESSIONS]() as session:
        stored = (await session.scalars(select(WebUser.password_hash))).one()
    assert stored.startswith("$argon2id$") and account.password not in stored


async def test_wrong_password_unknown_and_disabled_users_get_one_message(
    running_server: RunningServer,
) -> None:
    server = running_server
    account = await create_web_user(server, "viewer")
    disabled = await create_web_user(server, "admin")
    await users_service.set_disabled(server.app[app_keys.SESSIONS], disabled.name)
    attempts = [
        (account.name, account.password + "x"),  # wrong password
        ("nobody-" + uuid.uuid4().hex[:6], account.password),  # unknown user
        (disabled.name, disabled.password),  # right password, disabled user
        ("", ""),
    ]
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        for name, password in attempts:
            reply = await post_login(http, server.web_url, name, password)
            assert reply.status == 401, (name, reply.status)
            body = await reply.text()
            assert users_service.LOGIN_REFUSED in body
            assert password not in body or not password
            assert set_cookie(reply, SESSION_COOKIE) is None
            assert 'id="login-form"' in body  # the form again, with the name kept
    assert await count(server, WebSession) == 0


async def test_login_needs_its_csrf_cookie_and_token(running_server: RunningServer) -> None:
    server = running_server
    account = await create_web_user(server, "admin")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        # no token at all (a cross-site form has neither the cookie nor the token)
        form = {"name": account.name, "password": account.password}
        async with http.post(f"{server.web_url}/login", data=form) as reply:
            assert reply.status == 403 and CSRF_ERROR in await reply.text()
        # a wrong token with the right cookie
        await login_form(http, server.web_url)
        reply = await post_login(
            http, server.web_url, account.name, account.password, csrf="0" * 64
        )
        assert reply.status == 403
    assert await count(server, WebSession) == 0


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/runs?state=RUNNING", "/runs?state=RUNNING"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("", "/"),
    ],
)
def test_next_is_always_a_local_path(target: str, expected: str) -> None:
    assert safe_next(target) == expected


async def test_pages_redirect_to_login_and_back(running_server: RunningServer) -> None:
    server = running_server
    account = await create_web_user(server, "viewer")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        html = {"Accept": "text/html,application/xhtml+xml"}
        async with http.get(
            f"{server.web_url}/history?severity=error", headers=html, allow_redirects=False
        ) as reply:
            assert reply.status == 303
            location = reply.headers["Location"]
        assert location.startswith("/login?")
        assert parse_qs(urlsplit(location).query) == {"next": ["/history?severity=error"]}
        async with http.get(f"{server.web_url}{location}") as reply:
            body = await reply.text()
        assert 'name="next" value="/history?severity=error"' in body
        reply = await post_login(
            http, server.web_url, account.name, account.password, "/history?severity=error"
        )
        assert reply.headers["Location"] == "/history?severity=error"
        # An open redirect is refused: an absolute URL becomes "/".
        http.cookie_jar.clear()
        reply = await post_login(
            http, server.web_url, account.name, account.password, "//evil.example/"
        )
        assert reply.status == 303 and reply.headers["Location"] == "/"


# --- sessions -------------------------------------------------------------------------------


async def test_logout_ends_the_session_on_the_server(running_server: RunningServer) -> None:
    server = running_server
    async with logged_in_http(server, "viewer") as http:
        token = next(c.value for c in http.cookie_jar if c.key == SESSION_COOKIE)
        csrf = http.headers["X-CSRF-Token"]
        # logout is CSRF-protected too
        del http.headers["X-CSRF-Token"]
        async with http.post(f"{server.web_url}/logout", allow_redirects=False) as reply:
            assert reply.status == 403
        assert len(await session_hashes(server)) == 1
        async with http.post(
            f"{server.web_url}/logout", data={"csrf_token": csrf}, allow_redirects=False
        ) as reply:
            assert reply.status == 303 and reply.headers["Location"] == "/login"
            cleared = set_cookie(reply, SESSION_COOKIE)
            assert cleared is not None and cleared.value == ""
    assert await session_hashes(server) == []
    # The old cookie value, replayed, is worthless.
    async with (
        aiohttp.ClientSession(cookies={SESSION_COOKIE: token}) as replay,
        replay.get(f"{server.web_url}/api/v1/events") as reply,
    ):
        assert reply.status == 401


async def test_expired_session_is_refused_and_purged(running_server: RunningServer) -> None:
    server = running_server
    account = await create_web_user(server, "viewer")
    async with logged_in_http(server, account=account) as http:
        async with http.get(f"{server.web_url}/api/v1/events") as reply:
            assert reply.status == 200
        async with server.app[app_keys.SESSIONS]() as session, session.begin():
            await session.execute(
                update(WebSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        async with http.get(f"{server.web_url}/api/v1/events") as reply:
            assert reply.status == 401
            assert (await reply.json())["error"] == "unauthenticated"
    # The next login deletes expired sessions.
    async with logged_in_http(server, account=account):
        assert len(await session_hashes(server)) == 1


async def test_a_deleted_user_loses_its_sessions(running_server: RunningServer) -> None:
    server = running_server
    account = await create_web_user(server, "admin")
    async with logged_in_http(server, account=account) as http:
        await users_service.delete_user(server.app[app_keys.SESSIONS], account.name)
        async with http.get(f"{server.web_url}/api/v1/agents") as reply:
            assert reply.status == 401
    assert await session_hashes(server) == []


# --- every route ----------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


def _protected_routes(app: web.Application) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or isinstance(resource, web.StaticResource):
            continue
        key = (route.method, resource.canonical)
        if key in PUBLIC_ROUTES:
            continue
        routes.append(key)
    return routes


async def test_every_protected_route_needs_a_session(running_server: RunningServer) -> None:
    """Iterates the router: a route added later is covered without editing this test."""
    server = running_server
    routes = _protected_routes(server.app)
    assert ("GET", "/history") in routes and ("POST", "/runs/{run_id}/cancel") in routes
    assert ("GET", "/metrics") in routes and ("GET", "/history/stream") in routes
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            url = f"{server.web_url}{_concrete(path)}"
            async with http.request(method, url, allow_redirects=False) as reply:
                assert reply.status == 401, (method, path, reply.status)
                if method != "HEAD" and (path.startswith("/api/") or path == "/metrics"):
                    assert (await reply.json())["error"] == "unauthenticated"
            # A browser navigating to a page goes to the login form instead.
            if method == "GET" and not path.startswith("/api/") and path != "/metrics":
                headers = {"Accept": "text/html"}
                async with http.get(url, headers=headers, allow_redirects=False) as reply:
                    assert reply.status == 303, (path, reply.status)
                    assert reply.headers["Location"].startswith("/login?next=/")
            # A forged session cookie is no better than none.
            forged = {"Cookie": f"{SESSION_COOKIE}={'A' * 43}"}
            async with http.request(method, url, headers=forged, allow_redirects=False) as reply:
                assert reply.status == 401, (method, path, reply.status)
    # The allow-list answers without a session.
    async with aiohttp.ClientSession() as http:
        for path in ("/login", "/healthz", "/static/style.css"):
            async with http.get(f"{server.web_url}{path}") as reply:
                assert reply.status == 200, path


async def test_every_route_declares_its_access(running_server: RunningServer) -> None:
    check_routes(running_server.app.router, PUBLIC_ROUTES)  # the real app passes the start-up check
    for route in running_server.app.router.routes():
        if route.resource is not None and not isinstance(route.resource, web.StaticResource):
            assert access_of(route.handler) is not None, route


# --- CSRF and roles -------------------------------------------------------------------------


@pytest.fixture
async def agent(running_server: RunningServer) -> AsyncIterator[AgentClient]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        yield await AgentClient.enroll(running_server, channel)


async def running_run(agent: AgentClient) -> str:
    run_id = str(uuid.uuid4())
    await agent.checkin(
        run_updates=[
            run_update(run_id, agent_pb2.RUN_STATE_RUNNING, steps_total=3, started_at=ts())
        ]
    )
    return run_id


async def test_post_without_csrf_token_is_refused_and_changes_nothing(
    running_server: RunningServer, agent: AgentClient
) -> None:
    server = running_server
    run_id = await running_run(agent)
    base = server.web_url
    async with logged_in_http(server, "admin", csrf_header=False) as http:
        posts: list[tuple[str, dict[str, Any]]] = [
            (f"/api/v1/runs/{run_id}/cancel", {"json": {}}),
            (f"/api/v1/agents/{agent.agent_id}/runs", {"json": {}}),
            (f"/runs/{run_id}/cancel", {"data": {}}),
            (f"/agents/{agent.agent_id}/runs", {"data": {"csrf_token": "wrong"}}),
            (f"/api/v1/runs/{run_id}/cancel", {"json": {}, "headers": {"X-CSRF-Token": "x"}}),
        ]
        for path, kwargs in posts:
            async with http.post(f"{base}{path}", allow_redirects=False, **kwargs) as reply:
                assert reply.status == 403, (path, reply.status)
                assert CSRF_ERROR in await reply.text(), path
        # Another session's token does not fit this one either.
        async with logged_in_http(server, "admin") as other:
            foreign = other.headers["X-CSRF-Token"]
        async with http.post(
            f"{base}/api/v1/runs/{run_id}/cancel", json={}, headers={"X-CSRF-Token": foreign}
        ) as reply:
            assert reply.status == 403
    assert await count(server, PendingActionRow) == 0
    assert (await agent.checkin()).actions == []


async def test_cross_site_posts_are_refused_even_with_a_token(
    running_server: RunningServer, agent: AgentClient
) -> None:
    """Defence in depth behind the CSRF token: every POST (forms, API, login, logout) from
    another site is refused by the middleware; same-site and header-less clients pass."""
    server = running_server
    run_id = await running_run(agent)
    evil = {"Origin": "https://evil.example"}
    async with logged_in_http(server, "admin") as http:
        token = http.headers["X-CSRF-Token"]
        for path, kwargs in [
            (f"/runs/{run_id}/cancel", {"data": {"csrf_token": token}}),
            (f"/runs/{run_id}/inputs", {"data": {"csrf_token": token}}),
            (f"/api/v1/runs/{run_id}/cancel", {"json": {}}),
            ("/logout", {"data": {"csrf_token": token}}),
            ("/login", {"data": {"user": "x", "password": "y"}}),
        ]:
            for headers in (evil, {"Sec-Fetch-Site": "cross-site"}):
                async with http.post(
                    f"{server.web_url}{path}", headers=headers, allow_redirects=False, **kwargs
                ) as reply:
                    assert reply.status == 403, (path, headers, reply.status)
                    assert "cross-site requests are not allowed" in await reply.text()
        assert await count(server, PendingActionRow) == 0
        # The same site (the Origin's host is the request's Host, whatever the scheme) passes.
        same = {"Origin": server.web_url.replace("http://", "https://")}
        async with http.post(
            f"{server.web_url}/api/v1/runs/{run_id}/cancel", json={}, headers=same
        ) as reply:
            assert reply.status == 202


async def test_pages_for_a_logged_in_user_are_never_cached(running_server: RunningServer) -> None:
    async with logged_in_http(running_server, "viewer") as http:
        for path in ("/", "/history", "/runs", "/api/v1/events"):
            async with http.get(f"{running_server.web_url}{path}") as reply:
                assert reply.status == 200
                assert reply.headers["Cache-Control"] == "no-store", path


async def test_a_viewer_cannot_cancel_or_request_a_run_but_an_admin_can(
    running_server: RunningServer, agent: AgentClient
) -> None:
    server = running_server
    run_id = await running_run(agent)
    base = server.web_url
    async with logged_in_http(server, "viewer") as http:
        csrf = http.headers["X-CSRF-Token"]
        for path in (f"/api/v1/runs/{run_id}/cancel", f"/api/v1/agents/{agent.agent_id}/runs"):
            async with http.post(f"{base}{path}", json={}) as reply:
                assert reply.status == 403, path
                assert (await reply.json())["message"] == "this action needs the admin role"
        for path in (f"/runs/{run_id}/cancel", f"/agents/{agent.agent_id}/runs"):
            async with http.post(
                f"{base}{path}", data={"csrf_token": csrf}, allow_redirects=False
            ) as reply:
                assert reply.status == 403, path
        # The viewer sees the pages, without the buttons it may not use.
        async with http.get(f"{base}/runs/{run_id}") as reply:
            page = await reply.text()
        assert reply.status == 200 and 'id="cancel-form"' not in page
        async with http.get(f"{base}/agents/{agent.agent_id}") as reply:
            page = await reply.text()
        assert reply.status == 200 and "Run migration now" not in page
    assert await count(server, PendingActionRow) == 0

    async with logged_in_http(server, "admin") as http:
        async with http.get(f"{base}/runs/{run_id}") as reply:
            page = await reply.text()
        assert 'id="cancel-form"' in page
        assert f'name="csrf_token" value="{http.headers["X-CSRF-Token"]}"' in page
        async with http.post(
            f"{base}/runs/{run_id}/cancel",
            data={"csrf_token": http.headers["X-CSRF-Token"]},
            headers={"X-CSRF-Token": ""},
            allow_redirects=False,
        ) as reply:
            assert reply.status == 303  # the form field alone is enough
        async with http.post(f"{base}/api/v1/agents/{agent.agent_id}/runs", json={}) as reply:
            assert reply.status == 202
    kinds = sorted(action_body(a).kind for a in (await agent.checkin()).actions)
    assert kinds == ["cancel_run", "run_migration"]


# --- rate limit -----------------------------------------------------------------------------


async def test_login_rate_limit_answers_429_with_retry_after(db_url: str, tmp_path: Path) -> None:
    server = await start_server(make_server_config(db_url, tmp_path, login_rate_per_minute=3))
    try:
        account = await create_web_user(server, "admin")
        base = server.web_url
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            for _ in range(3):
                reply = await post_login(http, base, account.name, "wrong-password")
                assert reply.status == 401
            # Over the limit: even the right password waits; the form says why and when.
            reply = await post_login(http, base, account.name, account.password)
            assert reply.status == 429
            assert 1 <= int(reply.headers["Retry-After"]) <= 60
            body = await reply.text()
            assert "too many login attempts: the limit is 3 per 60 s" in body
            assert 'id="login-form"' in body and set_cookie(reply, SESSION_COOKIE) is None
            # Another user name from the same address has its own (per-user) budget ...
            other = await create_web_user(server, "viewer")
            reply = await post_login(http, base, other.name, other.password)
            assert reply.status == 303
            http.cookie_jar.clear()  # logged out again: the form is shown
            # ... until the per-address limit (4 x 3 attempts in a minute) is reached: so far
            # 5 attempts (the refused one counts there); 7 more names, then the 13th is refused.
            for index in range(7):
                reply = await post_login(http, base, f"ghost-{index}", "wrong-password")
                assert reply.status == 401
            reply = await post_login(http, base, other.name, other.password)
            assert reply.status == 429
            assert "login (per address)" in await reply.text()
    finally:
        await server.stop()


# --- the start-up check ---------------------------------------------------------------------


async def _start_with(sqlite_db_url: str, tmp_path: Path, route: Any) -> None:
    app = create_app(make_server_config(sqlite_db_url, tmp_path))
    app.router.add_get("/debug/open", route)
    runner = web.AppRunner(app)
    try:
        await runner.setup()
    finally:
        await runner.cleanup()


async def test_startup_check_refuses_an_undeclared_route(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    async def undeclared(request: web.Request) -> web.StreamResponse:
        return web.Response(text="secret")

    with pytest.raises(StartupCheckError) as caught:
        await _start_with(sqlite_db_url, tmp_path, undeclared)
    assert "GET /debug/open: no access declaration" in caught.value.message
    assert "HEAD /debug/open" in caught.value.message


async def test_startup_check_refuses_a_public_route_off_the_allow_list(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    @public
    async def open_route(request: web.Request) -> web.StreamResponse:
        return web.Response(text="secret")

    with pytest.raises(StartupCheckError) as caught:
        await _start_with(sqlite_db_url, tmp_path, open_route)
    assert "GET /debug/open: public but not on the allow-list" in caught.value.message

    # Declared (here: admin), the same route starts and is protected.
    @admin
    async def guarded(request: web.Request) -> web.StreamResponse:
        return web.Response(text="secret")

    router = web.UrlDispatcher()
    router.add_get("/debug/open", guarded)
    check_routes(router)


# --- secrets never stored or logged ---------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_password_and_session_never_in_the_database_or_logs(
    running_server: RunningServer, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = running_server
    password = "Unique-Passw0rd-" + uuid.uuid4().hex
    account = WebAccount(name="alice", password=password, role="admin")
    await users_service.create_user(server.app[app_keys.SESSIONS], "alice", password, "admin")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        wrong = await post_login(http, server.web_url, "alice", password + "-typo")
        assert wrong.status == 401 and password not in await wrong.text()
        csrf = await login_http(http, server.web_url, account)
        token = next(c.value for c in http.cookie_jar if c.key == SESSION_COOKIE)
        assert csrf == csrf_token_for(token)
    db_file = Path(db_url.removeprefix("sqlite+aiosqlite:///"))
    stored = b"".join(
        p.read_bytes() for p in db_file.parent.glob(db_file.name + "*") if p.is_file()
    )
    for secret in (password, password + "-typo", token):
        assert secret.encode() not in stored
        assert secret not in caplog.text
    assert "alice" in caplog.text  # the log does record who logged in


# --- /metrics -------------------------------------------------------------------------------


async def test_metrics_take_a_session_or_the_bearer_token(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("scrape-" + uuid.uuid4().hex + "\n")
    token = token_file.read_text().strip()
    server = await start_server(
        make_server_config(sqlite_db_url, tmp_path, metrics_token_file=str(token_file))
    )
    url = f"{server.web_url}/metrics"
    try:
        async with aiohttp.ClientSession() as http:
            for header, status in [
                (f"Bearer {token}", 200),
                (f"bearer {token}", 200),
                (f"Bearer {token}x", 401),
                (f"Basic {token}", 401),
                ("Bearer ", 401),
                ("", 401),
            ]:
                headers = {"Authorization": header} if header else {}
                async with http.get(url, headers=headers) as reply:
                    assert reply.status == status, header
                    if status == 200:
                        assert "flagpost_checkins_total" in await reply.text()
            # The token opens /metrics only.
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{server.web_url}/api/v1/events", headers=headers) as reply:
                assert reply.status == 401
        async with logged_in_http(server, "viewer") as http, http.get(url) as reply:
            assert reply.status == 200
    finally:
        await server.stop()


async def test_an_unreadable_metrics_token_file_stops_the_start(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    from server.errors import ConfigError

    config = make_server_config(
        sqlite_db_url, tmp_path, metrics_token_file=str(tmp_path / "missing")
    )
    with pytest.raises(ConfigError, match="metrics_token_file: cannot read"):
        create_app(config)


# --- the login page in a browser ------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_browser_logs_in_sees_the_history_and_logs_out(
    running_server: RunningServer, browser_page: Any
) -> None:
    from playwright.async_api import expect

    server = running_server
    account = await create_web_user(server, "viewer")
    page = browser_page.page
    response = await page.goto(f"{server.web_url}/history")
    assert response is not None
    assert page.url == f"{server.web_url}/login?next=/history"
    csp = (await response.all_headers())["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = await page.content()
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None  # no inline script
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline event handlers

    await page.fill("#login-name", account.name)
    await page.fill("#login-password", "not-the-password")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_have_text(users_service.LOGIN_REFUSED)

    await page.fill("#login-password", account.password)
    await page.click("#login-submit")
    await expect(page.locator("h1")).to_contain_text("History")
    assert page.url == f"{server.web_url}/history"
    await expect(page.locator("#session-user")).to_contain_text(account.name)
    await expect(page.locator("#session-user")).to_contain_text("viewer")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies[SESSION_COOKIE]["httpOnly"] is True
    assert cookies[SESSION_COOKIE]["sameSite"] == "Strict"
    assert LOGIN_CSRF_COOKIE not in cookies

    await page.click("#logout-button")
    await expect(page.locator("#login-form")).to_be_visible()
    await page.goto(f"{server.web_url}/history")
    assert page.url.startswith(f"{server.web_url}/login")
    assert await session_hashes(server) == []
    assert browser_page.dialogs == []
    # Only the refused login answered an error (401, on purpose; chromium logs it); no CSP
    # violation or script error (they are reported as problems too).
    assert browser_page.bad_responses == [f"401 {server.web_url}/login"]
    assert browser_page.problems == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]


# --- TLS: the session cookie is Secure ------------------------------------------------------


async def test_session_cookie_is_secure_under_tls(sqlite_db_url: str, tmp_path: Path) -> None:
    import ssl

    from test_tls import make_certs

    certs = make_certs(tmp_path / "certs")
    server = await start_server(
        make_server_config(
            sqlite_db_url,
            tmp_path,
            tls_cert_file=certs.path("server.pem"),
            tls_key_file=certs.path("server-key.pem"),
        )
    )
    try:
        assert server.web_url.startswith("https://")
        account = await create_web_user(server, "viewer")
        connector = aiohttp.TCPConnector(
            ssl=ssl.create_default_context(cafile=certs.path("ca.pem"))
        )
        async with aiohttp.ClientSession(cookie_jar=jar(), connector=connector) as http:
            async with http.get(f"{server.web_url}/login") as reply:
                login_cookie = set_cookie(reply, LOGIN_CSRF_COOKIE)
            assert login_cookie is not None and login_cookie["secure"] is True
            reply = await post_login(http, server.web_url, account.name, account.password)
            assert reply.status == 303
            cookie = set_cookie(reply, SESSION_COOKIE)
            assert cookie["secure"] is True and cookie["httponly"] is True
            assert cookie["samesite"] == "Strict"
            async with http.get(f"{server.web_url}/history") as page:
                assert page.status == 200 and account.name in await page.text()
    finally:
        await server.stop()
