"""HTTP handlers: parse and validate the request, call a service, render the result.

No SQL and no status-code decisions here: bad input raises ``InvalidArgument`` (mapped to 400 by
``server.web.middleware``), services raise ``Unavailable`` when the database is down.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from server import app_keys
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.web.auth import viewer
from server.web.health import healthz, metrics
from server.web.pages import add_page_routes
from server.web.params import parse_event_filter
from server.web.render import render_page
from server.web.run_pages import add_run_routes
from server.web.sse import history_stream
from server.web.views import history_page, page_json


@viewer
async def history(request: web.Request) -> web.StreamResponse:
    """``GET /history``: the filterable, keyset-paginated History page; its first page
    carries the URL and cursor of its live stream (``/history/stream``) when a bus runs."""
    config = request.app[app_keys.CONFIG]
    sessions = request.app[app_keys.SESSIONS]
    f = parse_event_filter(request.query, config.history_page_size)
    live_after: int | None = None
    if f.before_id is None and app_keys.BUS in request.app:
        page, live_after = await history_service.list_events_live(sessions, f)
    else:
        page = await history_service.list_events(sessions, f)
    agents = await history_service.list_agent_choices(sessions)
    waiting = await inputs_service.awaiting_among(
        sessions, sorted({e.run_id for e in page.events if e.run_id})
    )
    view = history_page(
        page,
        agents,
        default_limit=config.history_page_size,
        now=datetime.now(UTC),
        live_after=live_after,
        waiting_runs=waiting,
    )
    return await render_page("history.html", request, {"page": view})


@viewer
async def api_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events``: the History as JSON, same filters and cursor."""
    config = request.app[app_keys.CONFIG]
    f = parse_event_filter(request.query, config.history_page_size)
    page = await history_service.list_events(request.app[app_keys.SESSIONS], f)
    return web.json_response(page_json(page))


def add_routes(app: web.Application) -> None:
    """Register the web's routes on ``app``."""
    app.router.add_get("/history", history, name="history")
    app.router.add_get("/history/stream", history_stream, name="history_stream")
    app.router.add_get("/api/v1/events", api_events, name="api_events")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics, name="metrics")
    add_page_routes(app)
    add_run_routes(app)
