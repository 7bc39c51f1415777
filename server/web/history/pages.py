"""The History page (``/history``): the filterable, keyset-paginated list of every event."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from server import app_keys
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.web.history.views import history_page
from server.web.request import parse_event_filter
from server.web.sessions import web_sessions
from server.web.templates import render_page


async def history(request: web.Request) -> web.StreamResponse:
    """``GET /history``: the filterable, keyset-paginated History page; its first page
    carries the URL and cursor of its live stream (``/history/stream``) when a bus runs."""
    config = request.app[app_keys.CONFIG]
    sessions = web_sessions(request.app)
    f = parse_event_filter(request.query, config.history_page_size)
    live_after: int | None = None
    if f.before_id is None and app_keys.BUS in request.app:
        page, live_after = await history_service.list_events_live(sessions, f)
    else:
        page = await history_service.list_events(sessions, f)
    agents = await history_service.list_agent_choices(sessions)
    run_states = await inputs_service.run_states_among(
        sessions, sorted({e.run_id for e in page.events if e.run_id})
    )
    view = history_page(
        page,
        agents,
        default_limit=config.history_page_size,
        now=datetime.now(UTC),
        live_after=live_after,
        run_states=run_states,
    )
    return await render_page("history.html", request, {"page": view})
