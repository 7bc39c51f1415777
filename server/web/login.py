"""``GET/POST /login`` and ``POST /logout``: the web's sessions (see :mod:`server.web.auth`).

The login form is CSRF-protected with a double-submit cookie (``flagpost_login_csrf``, set by
``GET /login``; the form carries its HMAC). Attempts are rate limited per client address and
user name (``login_rate_per_minute``) and per address (``LOGIN_ADDRESS_FACTOR`` times that);
failed attempts also per user name from all addresses together
(``login_account_rate_per_minute``: many addresses guessing at one account are slowed, and
its owner can log in again once the oldest failure is a minute old). Over any limit the form
says when to retry (429 with ``Retry-After``). Every refused login
gets the same message, whether or not the user exists. The password is never logged.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web

from server import app_keys
from server.errors import RateLimited, Unauthenticated
from server.services import users as users_service
from server.services.ratelimit import RateLimiter
from server.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_TOKEN,
    csrf_token_for,
    current_user,
    safe_next,
)
from server.web.middleware import error_headers
from server.web.sessions import web_sessions

log = logging.getLogger(__name__)

LOGIN_ADDRESS_FACTOR: Final = 4  # one address may try this many times more, across user names
_FIELD_MAX: Final = 4096


@dataclass(frozen=True)
class LoginLimits:
    """The two login rate limiters of one app."""

    per_user: RateLimiter  # key: address + user name
    per_address: RateLimiter  # key: address
    per_account: RateLimiter  # key: user name; counts failed logins only, from any address


LOGIN_LIMITS = web.AppKey("login_limits", LoginLimits)


def _cookie_flags(request: web.Request) -> dict[str, Any]:
    """HttpOnly, SameSite=Strict, Path=/, and Secure when the server serves TLS."""
    return {
        "httponly": True,
        "samesite": "Strict",
        "path": "/",
        "secure": bool(request.app[app_keys.CONFIG].tls_cert_file),
    }


def _client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def _render_form(
    request: web.Request,
    *,
    next_path: str,
    name: str = "",
    error: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The login form, with a fresh login CSRF cookie when the browser has none."""
    login_secret = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = aiohttp_jinja2.render_template(
        "login.html",
        request,
        {
            "next_path": next_path,
            "login_name": name,
            "login_error": error,
            "login_csrf": csrf_token_for(login_secret),
        },
        status=status,
    )
    if headers:
        response.headers.update(headers)
    response.headers["Cache-Control"] = "no-store"
    if request.cookies.get(LOGIN_CSRF_COOKIE) != login_secret:
        response.set_cookie(LOGIN_CSRF_COOKIE, login_secret, **_cookie_flags(request))
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    """``GET /login``: the form (a logged-in user goes straight to ``next``)."""
    next_path = safe_next(request.query.get("next"))
    if current_user(request) is not None:
        raise web.HTTPSeeOther(next_path)
    return _render_form(request, next_path=next_path)


async def login_submit(request: web.Request) -> web.StreamResponse:
    """``POST /login`` (form: name, password, next, csrf_token): open a session, 303 to
    ``next``; the form again with one generic error otherwise."""
    form = await request.post()
    name = str(form.get("name", ""))[:_FIELD_MAX].strip()
    password = str(form.get("password", ""))[:_FIELD_MAX]
    next_path = safe_next(str(form.get("next", "")))
    limits = request.app[LOGIN_LIMITS]
    address = _client_address(request)
    try:
        limits.per_account.check(name)
        limits.per_address.hit(address)
        limits.per_user.hit(f"{address}\n{name}")
        try:
            login = await users_service.login(
                web_sessions(request.app),
                name,
                password,
                timedelta(hours=request.app[app_keys.CONFIG].session_ttl_hours),
            )
        except Unauthenticated:
            limits.per_account.record(name)
            raise
    except (RateLimited, Unauthenticated) as err:
        log.info("login refused for %r from %s: %s", name[:64], address, err.reason)
        return _render_form(
            request,
            next_path=next_path,
            name=name,
            error=err.message,
            status=err.http_status,
            headers=error_headers(err),
        )
    limits.per_user.reset(f"{address}\n{name}")
    log.info("login: %s (%s) from %s", login.user.name, login.user.role, address)
    response = web.HTTPSeeOther(next_path)
    response.set_cookie(
        SESSION_COOKIE,
        login.token,
        max_age=request.app[app_keys.CONFIG].session_ttl_hours * 3600,
        **_cookie_flags(request),
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /logout`` (CSRF): delete the session server-side, clear the cookie, 303 to
    ``/login``."""
    token = request.get(SESSION_TOKEN)
    if token:
        await users_service.logout(web_sessions(request.app), token)
    user = current_user(request)
    log.info("logout: %s", user.name if user else "?")
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def setup_login(app: web.Application) -> None:
    """The login rate limiters of ``app`` (the routes are in ``server.web.routes``)."""
    config = app[app_keys.CONFIG]
    rate = config.login_rate_per_minute
    app[LOGIN_LIMITS] = LoginLimits(
        per_user=RateLimiter("login", rate),
        per_address=RateLimiter("login (per address)", rate * LOGIN_ADDRESS_FACTOR),
        per_account=RateLimiter("login (per account)", config.login_account_rate_per_minute),
    )
