"""The History page (``/history``): the filterable, keyset-paginated list of every event."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiDict

from server import app_keys
from server.domain import EventPage
from server.errors import InvalidArgument
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.web.history.views import history_page
from server.web.request import parse_event_filter
from server.web.sessions import web_sessions
from server.web.templates import render_page

MAX_REFUSED_FIELDS = 12  # the History's query has fewer parameters than this


async def _refused(request: web.Request, error: InvalidArgument) -> web.StreamResponse:
    """The History page for a query with a bad value (400): the form as it was sent, the
    error next to the refused field, no rows. The other parameters are kept; a value that is
    still bad is dropped, one parameter after the other."""
    config = request.app[app_keys.CONFIG]
    query: MultiDict[str] = MultiDict(request.query)
    first = error
    for _ in range(MAX_REFUSED_FIELDS):
        try:
            f = parse_event_filter(query, config.history_page_size)
            break
        except InvalidArgument as again:
            name = (again.field or "").split("[")[0]
            if not name or name not in query:
                raise first from None
            query = MultiDict((k, v) for k, v in query.items() if k != name)
    else:
        raise first
    field = (first.field or "").split("[")[0]
    agents = await history_service.list_agent_choices(web_sessions(request.app))
    view = history_page(
        EventPage(events=[], next_before_id=None, filters=f),
        agents,
        default_limit=config.history_page_size,
        now=datetime.now(UTC),
    )
    typed = {name: request.query.get(name, "") for name in ("q", "spec", "since", "until")}
    form = replace(view.form, error_field=field, error=first.detail)
    if field in typed:  # the refused text as it was typed
        form = replace(form, **{field: typed[field]})  # type: ignore[arg-type]
    response = await render_page("history.html", request, {"page": replace(view, form=form)})
    response.set_status(400)
    return response


async def history(request: web.Request) -> web.StreamResponse:
    """``GET /history``: the filterable, keyset-paginated History page; its first page
    carries the URL and cursor of its live stream (``/history/stream``) when a bus runs. A bad
    filter value shows the page again (400) with the error next to its field."""
    config = request.app[app_keys.CONFIG]
    sessions = web_sessions(request.app)
    try:
        f = parse_event_filter(request.query, config.history_page_size)
    except InvalidArgument as exc:
        return await _refused(request, exc)
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
