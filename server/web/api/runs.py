"""The runs JSON API: runs, their logs, "cancel run" (``/api/v1/runs...``).

Thin handlers: validate the query (a bad value raises ``InvalidArgument`` naming the parameter,
a 400 from ``server.web.middleware``), call a service, return the body a builder of
``server.web.api.shapes`` makes from the domain objects. POSTs require ``Content-Type:
application/json`` (anything else is a 415), an admin session and its CSRF token
(``server.web.auth``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from server import app_keys
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.web.api.shapes import (
    LogSources,
    accepted_json,
    log_page_json,
    log_stats_json,
    run_detail_json,
    run_page_json,
)
from server.web.auth import actor_name
from server.web.request import json_body, parse_log_query, parse_run_filter, path_id
from server.web.sessions import web_sessions


async def list_runs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs``."""
    page = await runs_service.list_runs(web_sessions(request.app), parse_run_filter(request.query))
    return web.json_response(run_page_json(page, datetime.now(UTC)))


async def get_run(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}``."""
    detail = await runs_service.get_run(web_sessions(request.app), path_id(request, "run_id"))
    return web.json_response(run_detail_json(detail, datetime.now(UTC)))


async def run_logs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs``."""
    run_id = path_id(request, "run_id")
    page = await logs_service.query_logs(
        web_sessions(request.app), run_id, parse_log_query(request.query)
    )
    return web.json_response(log_page_json(page))


async def run_log_stats(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs/stats``."""
    stats = await logs_service.log_stats(web_sessions(request.app), path_id(request, "run_id"))
    return web.json_response(log_stats_json(stats))


async def run_log_sources(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs/sources``."""
    sources = await logs_service.log_sources(web_sessions(request.app), path_id(request, "run_id"))
    return web.json_response(LogSources(sources=sources))


async def cancel_run(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/runs/{run_id}/cancel``: 202 with the queued ``cancel_run`` action."""
    run_id = path_id(request, "run_id")
    await json_body(request)
    app = request.app
    action = await runs_service.request_cancel(
        web_sessions(app),
        app[app_keys.CONFIG],
        run_id,
        actor_name(request),
        bus=app.get(app_keys.BUS),
    )
    return web.json_response(accepted_json(action), status=202)
