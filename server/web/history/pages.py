"""The History page (``/history``): the filterable, keyset-paginated list of every event."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from aiohttp import web

from server import app_keys
from server.domain import EventFilter, EventPage
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.web.history.views import history_page
from server.web.refused import RefusedParam, parse_dropping_refused, refused_status
from server.web.request import parse_event_filter
from server.web.sessions import web_sessions
from server.web.templates import render_page


async def _refused(
    request: web.Request, f: EventFilter, refused: RefusedParam
) -> web.StreamResponse:
    """The History page for a query with a bad value (400): the form as it was sent (the
    refused text kept in its field, the error next to it), the other filters applied to the
    form, no rows."""
    config = request.app[app_keys.CONFIG]
    agents = await history_service.list_agent_choices(web_sessions(request.app))
    view = history_page(
        EventPage(events=[], next_before_id=None, filters=f),
        agents,
        default_limit=config.history_page_size,
        now=datetime.now(UTC),
    )
    form = replace(view.form, refused=refused)
    response = await render_page("history.html", request, {"page": replace(view, form=form)})
    return refused_status(response, refused)


async def history(request: web.Request) -> web.StreamResponse:
    """``GET /history``: the filterable, keyset-paginated History page; its first page
    carries the URL and cursor of its live stream (``/history/stream``) when a bus runs. A bad
    filter value shows the page again (400) with the error next to its field."""
    config = request.app[app_keys.CONFIG]
    sessions = web_sessions(request.app)
    f, refused = parse_dropping_refused(
        request.query, lambda query: parse_event_filter(query, config.history_page_size)
    )
    if refused is not None:
        return await _refused(request, f, refused)
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
