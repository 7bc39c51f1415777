"""The web transport (aiohttp + Jinja2): pages, live streams (Server-Sent Events), the JSON API,
login, health and metrics. ``server.web.routes`` is the route table: every URL, its handler and
its access level.

Layout: ``routes`` (the table) · ``request`` (path ids, bodies, every query parser) · ``sse``
(what every live stream shares) · ``templates`` (page rendering, macros from Python) · ``auth``
(access levels, sessions, CSRF, the start-up route check) · ``login`` · ``middleware`` (errors,
security headers) · ``health`` (/healthz, /metrics) · one folder per resource a user sees:
``history/``, ``fleet/`` (overview, agents), ``runs/`` (runs, logs, inputs), ``api/`` (JSON,
OpenAPI).

``setup_web(app)`` is called by ``server.app.create_app``; it expects ``app_keys.CONFIG`` to be
set and ``app_keys.SESSIONS`` / ``app_keys.ENGINE`` (and ``app_keys.BUS`` for live updates, see
``server.app.bus_ctx``) to be available once the app has started.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web

from server import app_keys
from server.resources import STATIC_DIR, TEMPLATES_DIR
from server.web.auth import setup_auth
from server.web.live import LIVE, LiveStreams, stop_readers
from server.web.login import setup_login
from server.web.middleware import error_middleware, security_headers
from server.web.routes import PUBLIC_ROUTES, add_routes
from server.web.sse import end_streams_on_shutdown
from server.web.stream_limits import StreamLimits


def setup_web(app: web.Application) -> None:
    """Register templates (autoescaped), ``/static``, the routes, the error middleware and the
    security headers on ``app``."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "xml"), default_for_string=True, default=True
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static_url"] = _static_url(app)
    app.middlewares.append(error_middleware)
    setup_auth(app, PUBLIC_ROUTES)  # after the error middleware: its 401/403s are mapped there
    app.on_shutdown.append(end_streams_on_shutdown)
    app[LIVE] = LiveStreams(StreamLimits.from_config(app[app_keys.CONFIG]))
    app.on_cleanup.append(stop_readers)
    app.on_response_prepare.append(security_headers)
    setup_login(app)
    add_routes(app)
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=True)


def _static_url(app: web.Application) -> Callable[[str], str]:
    """A template helper: ``static_url('style.css')`` -> ``/static/style.css?v=<hash>``."""

    def static_url(filename: str) -> str:
        return str(app.router["static"].url_for(filename=filename))

    return static_url
