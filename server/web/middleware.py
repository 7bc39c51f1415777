"""The web's error mapping and security headers.

``error_middleware`` is the ONE place a :class:`server.errors.FlagpostError` becomes an HTTP
status: a JSON body ``{"error": reason, "message": ...}`` under ``/api/``, an HTML page elsewhere.
Unexpected exceptions become a 500 that reveals nothing about the internals.

Security headers are set in an ``on_response_prepare`` hook rather than a middleware so that every
response gets them, including static files, redirects and responses aiohttp builds itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

import aiohttp_jinja2
from aiohttp import web

from server.errors import FlagpostError, ResourceExhausted
from server.web.api.shapes import Error
from server.web.auth import USER

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_HTTP_REASONS: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def _wants_json(request: web.Request) -> bool:
    """JSON errors for the API, /healthz, /metrics and live streams (EventSource); the HTML
    error page for browsers' pages."""
    if request.path.startswith("/api/") or request.path in {"/healthz", "/metrics"}:
        return True
    return "text/event-stream" in request.headers.get("Accept", "")


def error_headers(err: FlagpostError) -> dict[str, str]:
    """The headers an error's response carries (``Retry-After`` for ResourceExhausted)."""
    if isinstance(err, ResourceExhausted):
        return {"Retry-After": str(max(1, math.ceil(err.retry_after_ms / 1000)))}
    return {}


def error_response(
    request: web.Request,
    status: int,
    reason: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """A JSON error body under ``/api/`` (and ``/healthz``), the error page elsewhere."""
    if _wants_json(request):
        return web.json_response(
            Error(error=reason, message=message), status=status, headers=headers
        )
    response = aiohttp_jinja2.render_template(
        "error.html",
        request,
        {"status": status, "reason": reason, "message": message},
        status=status,
    )
    if headers:
        response.headers.update(headers)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map ``FlagpostError`` (and aiohttp's own 4xx/5xx) to responses; hide everything else."""
    try:
        return await handler(request)
    except FlagpostError as err:
        headers = error_headers(err)
        if err.http_status >= 500:
            log.warning(
                "%s %s -> %s (%s)", request.method, request.path, err.http_status, err.reason
            )
        return error_response(request, err.http_status, err.reason, err.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like
        extra = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(
            request,
            exc.status,
            _HTTP_REASONS.get(exc.status, "http_error"),
            exc.reason,
            extra,
        )
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(request, 500, "internal", "Internal server error.")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: add the CSP and friends to every response; a response to a
    logged-in user (pages carry the CSRF token and fleet data) is never cached, so the back
    button after logout shows nothing of it."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.get(USER) is not None:
        response.headers.setdefault("Cache-Control", "no-store")
