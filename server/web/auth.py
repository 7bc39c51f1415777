"""Web access control: who may call which route, enforced in one middleware.

Every route's access is declared in the route table (``server.web.routes``), which marks the
handler; a route added outside the table uses one of the decorators below instead.
``auth_middleware`` reads the declaration of the matched route and enforces it:

- ``@public``: anyone. Only routes on the allow-list (the route table's public rows,
  ``server.web.routes.PUBLIC_ROUTES``, plus the static files) may be public; ``check_routes``
  (run first thing at start-up) refuses to start the server when a route has no declaration,
  or is public without being on that allow-list.
- ``@viewer``: a logged-in user of any role.
- ``@admin``: a logged-in admin (a viewer gets 403).
- ``@metrics_reader``: a logged-in user, or ``Authorization: Bearer <token>`` with the token
  from ``config.metrics_token_file`` (Prometheus).

Without a session, a browser asking for an HTML page (``GET``/``HEAD`` accepting
``text/html``) is redirected (303) to ``/login?next=<path>``; everything else (the JSON API,
the live streams, fragments fetched by scripts) gets 401. Every non-safe method (``POST``,
``PUT``, ``PATCH``, ``DELETE``) must also carry a CSRF token, in the ``X-CSRF-Token`` header or
the ``csrf_token`` form field: an HMAC-SHA256 keyed with the session's cookie value (so it is
stateless, valid on every replica, and useless without the cookie). ``POST /login`` has no
session yet; it uses a double-submit cookie instead (``login_csrf_token``).

The logged-in user is on the request as ``request[USER]`` (a :class:`WebUser`, or None on a
public route without a session); templates get ``current_user`` and ``csrf_token``.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Final, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
from aiohttp import hdrs, web
from aiohttp.web_exceptions import NotAppKeyWarning

from server import app_keys
from server.config import ServerConfig
from server.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable
from server.services import users as users_service
from server.services.users import WebUser
from server.web.sessions import web_sessions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

SESSION_COOKIE: Final = "flagpost_session"
LOGIN_CSRF_COOKIE: Final = "flagpost_login_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
CSRF_ERROR: Final = "CSRF token missing or wrong"
_CSRF_CONTEXT: Final = b"flagpost-csrf-v1"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# The allow-list (the ONLY routes that may be reached without logging in) is the table's
# PUBLIC rows: ``server.web.routes.PUBLIC_ROUTES``, handed to ``setup_auth``. Static files (the
# ``/static`` resource) are allowed too; see ``check_routes``.
PUBLIC_STATIC_PREFIXES: Final[frozenset[str]] = frozenset({"/static"})


class Access(StrEnum):
    """What a route requires."""

    PUBLIC = "public"
    VIEWER = "viewer"
    ADMIN = "admin"
    METRICS = "metrics"  # a viewer session or the metrics bearer token


USER = web.RequestKey("user", WebUser)
SESSION_TOKEN = web.RequestKey("session_token", str)

_ACCESS_ATTR: Final = "__flagpost_access__"


def _declare(access: Access) -> Callable[[H], H]:
    def mark(handler: H) -> H:
        declare(handler, access)
        return handler

    return mark


# Decorators for a route added outside the table (tests, extensions); the table's rows are
# declared by ``server.web.routes.add_routes``.
public = _declare(Access.PUBLIC)
"""Anyone may call the handler (the route must also be on the allow-list)."""
viewer = _declare(Access.VIEWER)
"""Any logged-in user may call the handler."""
admin = _declare(Access.ADMIN)
"""Only a logged-in admin may call the handler."""
metrics_reader = _declare(Access.METRICS)
"""A logged-in user, or a scraper with the metrics bearer token."""


def declare(handler: Handler, access: Access) -> None:
    """Declare ``handler``'s access (``server.web.routes`` does it for every row of the route
    table); a handler declared twice with different levels is a programming error."""
    declared = access_of(handler)
    if declared is not None and declared is not access:
        raise ValueError(f"{handler.__qualname__}: declared {declared}, the table says {access}")
    setattr(handler, _ACCESS_ATTR, access)


def access_of(handler: object) -> Access | None:
    """The access ``handler`` declared (None: none: the start-up check refuses that)."""
    value = getattr(handler, _ACCESS_ATTR, None)
    return value if isinstance(value, Access) else None


# --- tokens -------------------------------------------------------------------------------


def csrf_token_for(secret: str) -> str:
    """The CSRF token bound to ``secret`` (a session cookie value, or the login CSRF cookie)."""
    return hmac.new(secret.encode("utf-8"), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_matches(secret: str, presented: str | None) -> bool:
    """Does ``presented`` match ``secret``'s CSRF token? (constant-time comparison)"""
    if not presented:
        return False
    return hmac.compare_digest(csrf_token_for(secret).encode(), presented.encode("utf-8"))


def safe_next(value: str | None) -> str:
    """A redirect target after login: a local absolute path, else ``/`` (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 0x20 or c == "\\" for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def require_same_origin(request: web.Request) -> None:
    """Refuse a cross-site request: a browser's ``Sec-Fetch-Site`` or ``Origin`` must say it
    comes from this site (``Origin``'s host and port must be the request's ``Host``; the scheme
    is not compared, so a TLS-terminating proxy in front does not break it). Clients that send
    neither (scripts, Prometheus, tests) pass. Defence in depth behind the CSRF token, applied
    by the middleware to every non-safe request."""
    site = request.headers.get("Sec-Fetch-Site", "")
    if site and site not in ("same-origin", "none"):
        raise PermissionDenied("cross-site requests are not allowed")
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower():
        raise PermissionDenied("cross-site requests are not allowed")


def login_url(next_path: str) -> str:
    """``/login?next=<path>`` (the path quoted)."""
    return "/login?next=" + quote(safe_next(next_path), safe="/")


# --- the start-up check -------------------------------------------------------------------


class StartupCheckError(ConfigError):
    """A route is left open (no access declaration, or public but not on the allow-list)."""

    reason = "startup_check"


def _is_static(resource: web.AbstractResource) -> bool:
    return isinstance(resource, web.StaticResource) and (
        resource.canonical in PUBLIC_STATIC_PREFIXES
    )


def check_routes(router: web.UrlDispatcher, allow: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse (``StartupCheckError`` naming every offending route) when a route of ``router``
    has no access declaration, or is declared public without being on ``allow``."""
    allowed = frozenset(allow)
    problems: list[str] = []
    for route in router.routes():
        resource = route.resource
        if resource is None:
            continue
        if _is_static(resource):
            continue
        method, path = route.method, resource.canonical
        access = access_of(route.handler)
        if access is None:
            problems.append(f"{method} {path}: no access declaration (public/viewer/admin)")
        elif access is Access.PUBLIC and (method, path) not in allowed:
            problems.append(f"{method} {path}: public but not on the allow-list")
    if problems:
        raise StartupCheckError(
            "refusing to start: unprotected web route(s): " + "; ".join(sorted(problems))
        )


# --- the middleware -----------------------------------------------------------------------


def _wants_redirect(request: web.Request) -> bool:
    """A browser navigating to a page (the API and /metrics always answer 401)."""
    return (
        request.method in {"GET", "HEAD"}
        and not request.path.startswith("/api/")
        and request.path != "/metrics"
        and "text/html" in request.headers.get(hdrs.ACCEPT, "")
    )


def _metrics_token_ok(request: web.Request) -> bool:
    expected = request.app[METRICS_TOKEN]
    if not expected:
        return False
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    return hmac.compare_digest(
        hashlib.sha256(presented.strip().encode("utf-8")).digest(),
        hashlib.sha256(expected.encode("utf-8")).digest(),
    )


async def _presented_csrf(request: web.Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.content_type in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        value = (await request.post()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


async def _check_login_csrf(request: web.Request) -> None:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not cookie or not csrf_matches(cookie, await _presented_csrf(request)):
        raise PermissionDenied(CSRF_ERROR + " (reload the login page and try again)")


METRICS_TOKEN = web.AppKey("metrics_token", str)


async def _session_user(request: web.Request, token: str | None, *, public: bool) -> WebUser | None:
    """The user of the request's session cookie. A public route (/healthz, /login) still
    answers while the database is down: the lookup's Unavailable counts as "no session"."""
    if not token:
        return None
    try:
        return await users_service.resolve_session(web_sessions(request.app), token)
    except Unavailable:
        if public:
            return None
        raise


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the matched route's access declaration (see the module docstring)."""
    _expose_to_templates(request)  # logged out, until a session is found
    match_info = request.match_info
    if match_info.http_exception is not None:  # 404 / 405: nothing to protect
        return await handler(request)
    route = match_info.route
    resource = route.resource
    if resource is not None and _is_static(resource):
        return await handler(request)
    access = access_of(route.handler)
    if access is None:  # the start-up check makes this unreachable; fail closed anyway
        raise PermissionDenied("this route has no access declaration")
    if request.method not in SAFE_METHODS:
        require_same_origin(request)

    token = request.cookies.get(SESSION_COOKIE)
    user = await _session_user(request, token, public=access is Access.PUBLIC)
    if user is not None and token:
        request[USER] = user
        request[SESSION_TOKEN] = token
        _expose_to_templates(request)

    if access is Access.PUBLIC:
        if request.method not in SAFE_METHODS:
            if user is not None and token:
                if not csrf_matches(token, await _presented_csrf(request)):
                    await _check_login_csrf(request)
            else:
                await _check_login_csrf(request)
        return await handler(request)

    if user is None:
        if access is Access.METRICS and _metrics_token_ok(request):
            return await handler(request)
        if _wants_redirect(request):
            raise web.HTTPSeeOther(login_url(request.path_qs))
        raise Unauthenticated("log in first: this route needs a session")

    if request.method not in SAFE_METHODS and not csrf_matches(
        token or "", await _presented_csrf(request)
    ):
        raise PermissionDenied(CSRF_ERROR)
    if access is Access.ADMIN and not user.is_admin:
        raise PermissionDenied("this action needs the admin role")
    return await handler(request)


def _expose_to_templates(request: web.Request) -> None:
    """Every template gets ``current_user`` (None when logged out) and ``csrf_token`` (""
    when logged out), through aiohttp_jinja2's per-request context (the mechanism of its
    context processors, whose middleware would run before this one). That context lives under
    a plain string key, which aiohttp warns about; the warning is silenced for this one store."""
    user = request.get(USER)
    token = request.get(SESSION_TOKEN)
    context = request.get(aiohttp_jinja2.REQUEST_CONTEXT_KEY)
    if context is None:
        context = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotAppKeyWarning)
            request[aiohttp_jinja2.REQUEST_CONTEXT_KEY] = context
    context["current_user"] = user
    context["csrf_token"] = csrf_token_for(token) if token else ""


def current_user(request: web.Request) -> WebUser | None:
    """The logged-in user of ``request`` (None on a public route without a session)."""
    return request.get(USER)


async def session_still_valid(request: web.Request) -> bool:
    """For long-lived responses (the live streams): is the session that opened ``request``
    still valid -- not logged out, expired, or its user deleted or disabled? True for a request
    that came without a session (the metrics token). The streams ask at every heartbeat and
    end when it is not."""
    token = request.get(SESSION_TOKEN)
    if token is None:
        return True
    return await users_service.resolve_session(web_sessions(request.app), token) is not None


def actor_name(request: web.Request) -> str:
    """The name recorded as who requested, cancelled or answered something: the logged-in
    user's. Behind ``@admin`` there always is one; without one this fails closed."""
    user = current_user(request)
    if user is None:
        raise Unauthenticated("log in first")
    return user.name


def load_metrics_token(config: ServerConfig) -> str:
    """The bearer token for ``/metrics`` from ``config.metrics_token_file`` ("" when unset);
    ConfigError when the file is set but unreadable or empty."""
    if not config.metrics_token_file:
        return ""
    try:
        with open(config.metrics_token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"metrics_token_file: cannot read {config.metrics_token_file}: {exc.strerror}"
        ) from None
    if len(token) < 16:
        raise ConfigError("metrics_token_file: the token must be at least 16 characters")
    return token


ALLOW_LIST: web.AppKey[frozenset[tuple[str, str]]] = web.AppKey("public_routes")


async def _startup_check(app: web.Application) -> None:
    allowed: frozenset[tuple[str, str]] = app[ALLOW_LIST]
    check_routes(app.router, allowed)


def setup_auth(app: web.Application, public_routes: Iterable[tuple[str, str]]) -> None:
    """Install the access middleware (after the error middleware, so its errors are mapped),
    read the metrics token, and run :func:`check_routes` first thing at start-up (before the
    database or gRPC start), so a route added after ``create_app`` is checked too."""
    app[METRICS_TOKEN] = load_metrics_token(app[app_keys.CONFIG])
    app[ALLOW_LIST] = frozenset(public_routes)
    app.middlewares.append(auth_middleware)
    app.on_startup.insert(0, _startup_check)
    app.on_startup.append(_warm_up)


async def _warm_up(app: web.Application) -> None:
    await users_service.warm_up()
