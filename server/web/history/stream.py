"""``GET /history/stream``: new History rows as Server-Sent Events.

The stream takes the History page's filter parameters. Its cursor is an ``update_events.id``:
the ``Last-Event-ID`` header (a reconnecting EventSource), else the ``after`` parameter (the page
renders the highest id it knew of), else the current highest id. Rows are always read from the
database, ascending from the cursor, so a client that reconnects gets exactly what it missed.

Frames::

    id: 42                       a matching row: the row as /api/v1/events shows it, and its
    event: event                 HTML rendered by the page's own Jinja macro (same escaping)
    data: {"event": {...}, "html": "<li ...>"}

    id: 57                       rows up to 57 were examined but none matched the filters:
                                 moves the client's Last-Event-ID past them

    : keepalive                  heartbeat comment, every ``heartbeat_seconds`` of silence

The handler sleeps on the event bus (:mod:`server.services.bus`) between reads; a wake-up only
means "something was committed", never what.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server import app_keys
from server.domain import EventFilter, StoredEvent
from server.errors import InvalidArgument, Unavailable
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.web.api.shapes import event_json
from server.web.history.views import EventRow, event_row
from server.web.request import parse_event_filter
from server.web.sessions import web_sessions
from server.web.sse import client_gone, cursor_frame, frame, heartbeat, open_stream, stream_cursor

log = logging.getLogger(__name__)

ROW_TEMPLATE = "_event_row.html"
ROW_MACRO = "event_row"
RowRenderer = Callable[[EventRow], Any]  # the Jinja macro: returns Markup


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Tunables of the live stream (an app may override them with :data:`STREAM_SETTINGS`)."""

    heartbeat_seconds: float = 15.0
    batch_size: int = 100  # rows per database read
    retry_ms: int = 2_000  # the reconnect delay suggested to EventSource
    disconnect_check_seconds: float = 1.0  # how soon a vanished client is noticed


STREAM_SETTINGS = web.AppKey("history_stream_settings", StreamSettings)


def _frame(event: StoredEvent, html: str) -> str:
    return frame("event", {"event": event_json(event), "html": html}, event.id)


async def history_stream(request: web.Request) -> web.StreamResponse:
    """``GET /history/stream``: the History's new rows matching the page's filters (SSE)."""
    app = request.app
    config = app[app_keys.CONFIG]
    if "before" in request.query:
        raise InvalidArgument("the live stream only follows the newest events", field="before")
    f = parse_event_filter(request.query, config.history_page_size)
    cursor = stream_cursor(request.headers, request.query)
    bus = app.get(app_keys.BUS)
    if bus is None:
        raise Unavailable("live updates are not enabled on this server")
    settings = app.get(STREAM_SETTINGS) or StreamSettings()
    sessions = web_sessions(app)
    render_row: RowRenderer = getattr(
        aiohttp_jinja2.get_env(app).get_template(ROW_TEMPLATE).module, ROW_MACRO
    )
    loop = asyncio.get_running_loop()

    # Subscribe before reading anything: a commit after our first read always wakes us.
    with bus.subscribe() as sub:
        if cursor is None:
            cursor = await history_service.latest_event_id(sessions)
        response = await open_stream(request, settings.retry_ms, cursor)
        try:
            last_write = loop.time()
            must_read = True
            while not sub.closed:
                if must_read:
                    cursor, wrote = await _send_new_rows(
                        response, sessions, f, cursor, settings.batch_size, render_row
                    )
                    if wrote:
                        last_write = loop.time()
                silent = loop.time() - last_write
                if silent >= settings.heartbeat_seconds:
                    if not await heartbeat(request, response, "history"):
                        break
                    last_write = loop.time()
                    must_read = False
                    continue
                if client_gone(request):
                    break
                wait = min(settings.heartbeat_seconds - silent, settings.disconnect_check_seconds)
                woke = await sub.wait(wait)
                must_read = woke and not sub.closed and sub.take(cursor)
        except ConnectionResetError:  # the client went away mid-write
            log.debug("history stream: client disconnected")
        except Unavailable:
            log.warning("history stream: database unavailable; ending the stream")
    return response


async def _send_new_rows(
    response: web.StreamResponse,
    sessions: async_sessionmaker[AsyncSession],
    f: EventFilter,
    cursor: int,
    batch_size: int,
    render_row: RowRenderer,
) -> tuple[int, bool]:
    """Read and send every row after ``cursor``; returns the new cursor and whether anything
    was written."""
    wrote = False
    now = datetime.now(UTC)
    while True:
        batch = await history_service.read_new_events(sessions, f, cursor, batch_size)
        waiting = await inputs_service.awaiting_among(
            sessions, sorted({e.run_id for e in batch.events if e.run_id})
        )
        parts = [_frame(e, str(render_row(event_row(e, now, waiting)))) for e in batch.events]
        last_sent = batch.events[-1].id if batch.events else cursor
        if batch.cursor > last_sent:
            parts.append(cursor_frame(batch.cursor))
        cursor = batch.cursor
        if parts:
            await response.write("".join(parts).encode())
            wrote = True
        if not batch.more:
            return cursor, wrote
