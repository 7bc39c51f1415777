"""The web transport (aiohttp + Jinja2): the fleet overview (``/``), agent pages, the runs pages
and the History, their live streams (Server-Sent Events), the JSON API, the health endpoint.

Modules: ``routes`` (History, health) · ``pages`` (overview, agent) · ``run_pages`` (runs,
run, their forms) · ``sse`` / ``run_stream`` (live streams) · ``views`` / ``fleet_views`` /
``run_views`` / ``charts`` (view models) · ``params`` / ``log_params`` (query parsing) ·
``api_runs`` / ``openapi`` (the runs JSON API) · ``middleware`` (errors, security headers) ·
``auth`` (access declarations, sessions, CSRF, the start-up route check) · ``login`` (login,
logout).

``setup_web(app)`` is called by ``server.app.create_app``; it expects ``keys.CONFIG`` to be set and
``keys.SESSIONS`` / ``keys.ENGINE`` (and ``keys.BUS`` for live updates, see
``server.app.bus_ctx``) to be available once the app has started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from server.web.api_runs import add_api_routes
from server.web.auth import setup_auth
from server.web.input_pages import add_input_routes
from server.web.login import add_login_routes
from server.web.middleware import error_middleware, security_headers
from server.web.routes import add_routes
from server.web.sse import end_streams_on_shutdown

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
TEMPLATES_DIR = WEB_ROOT / "templates"
STATIC_DIR = WEB_ROOT / "static"


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
    setup_auth(app)  # after the error middleware: its 401/403s are mapped there
    app.on_shutdown.append(end_streams_on_shutdown)
    app.on_response_prepare.append(security_headers)
    add_routes(app)
    add_api_routes(app)
    add_input_routes(app)
    add_login_routes(app)
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=True)


def _static_url(app: web.Application) -> Callable[[str], str]:
    """A template helper: ``static_url('style.css')`` -> ``/static/style.css?v=<hash>``."""

    def static_url(filename: str) -> str:
        return str(app.router["static"].url_for(filename=filename))

    return static_url
