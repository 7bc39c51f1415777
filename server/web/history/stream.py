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

Once caught up, a stream does no database work: the app's shared reader
(:mod:`server.web.history.fanout`) reads each new row once per event-bus wake-up, renders it
once and hands it to every stream, which only filters and writes. A stream whose cursor is
behind the reader catches up with its own reads (``batch_size`` rows each) first. A stream
whose client does not read is ended once ``outbox_bytes`` are waiting for it (logged at info
with its cursor); the client reconnects with ``Last-Event-ID``. At most
``max_streams_per_session`` / ``max_streams_total`` streams are open (429 beyond,
:mod:`server.web.stream_limits`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server import app_keys
from server.domain import EventFilter
from server.errors import InvalidArgument, Unavailable
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.web.history.fanout import (
    HistoryFanout,
    HistorySubscriber,
    RowRenderer,
    event_frame,
)
from server.web.history.views import event_row
from server.web.live import LIVE, session_valid, stream_slot
from server.web.request import parse_event_filter
from server.web.sessions import web_sessions
from server.web.sse import (
    Outbox,
    cursor_frame,
    follow,
    open_stream,
    overflow_handler,
    stream_cursor,
)

log = logging.getLogger(__name__)

ROW_TEMPLATE = "_event_row.html"
ROW_MACRO = "event_row"


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Tunables of the live stream (an app may override them with :data:`STREAM_SETTINGS`)."""

    heartbeat_seconds: float = 15.0
    batch_size: int = 100  # rows per database read
    retry_ms: int = 2_000  # the reconnect delay suggested to EventSource
    disconnect_check_seconds: float = 1.0  # how soon a vanished client is noticed
    outbox_bytes: int = 1 << 20  # frames waiting for a client that does not read: then it ends
    min_interval_seconds: float = 0.25  # live rate cap: at most one shared read per interval


STREAM_SETTINGS = web.AppKey("history_stream_settings", StreamSettings)


def _fanout(app: web.Application, settings: StreamSettings) -> HistoryFanout:
    live = app[LIVE]
    if live.history is None:
        render: RowRenderer = getattr(
            aiohttp_jinja2.get_env(app).get_template(ROW_TEMPLATE).module, ROW_MACRO
        )
        live.history = HistoryFanout(
            app,
            settings.batch_size,
            app[app_keys.CONFIG].is_sqlite,
            render,
            settings.min_interval_seconds,
        )
    return live.history


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
    fanout = _fanout(app, settings)
    with stream_slot(request), bus.register_stream() as lifecycle:
        sessions = web_sessions(app)
        resuming = cursor is not None
        if cursor is None:
            cursor = await history_service.latest_event_id(sessions)
        response = await open_stream(request, settings.retry_ms, cursor)
        sub: HistorySubscriber | None = None
        try:
            # A resumed stream reads its backlog itself (to the newest row), as does one behind
            # the shared reader; then it joins the reader.
            more = resuming
            while (more or fanout.behind(cursor)) and not lifecycle.closed:
                cursor, more = await _send_new_rows(
                    response, sessions, f, cursor, settings.batch_size, fanout.render
                )
            sub = HistorySubscriber(f, cursor, lifecycle.wake)
            sub.written = cursor
            sub.outbox = Outbox(
                settings.outbox_bytes,
                lifecycle.wake,
                overflow_handler(request, sub, "history", "id"),
            )
            fanout.join(sub)
            await follow(
                request,
                response,
                sub,
                lifecycle,
                name="history",
                heartbeat_seconds=settings.heartbeat_seconds,
                disconnect_check_seconds=settings.disconnect_check_seconds,
                session_valid=session_valid,
            )
        except ConnectionResetError:  # the client went away mid-write
            log.debug("history stream: client disconnected")
        except Unavailable:
            log.warning("history stream: database unavailable; ending the stream")
        finally:
            if sub is not None:
                fanout.leave(sub)
    return response


async def _send_new_rows(
    response: web.StreamResponse,
    sessions: async_sessionmaker[AsyncSession],
    f: EventFilter,
    cursor: int,
    batch_size: int,
    render_row: RowRenderer,
) -> tuple[int, bool]:
    """Catch-up: read (with the stream's own filter) and send the rows after ``cursor``, one
    batch; returns the new cursor and whether the batch was full."""
    now = datetime.now(UTC)
    batch = await history_service.read_new_events(sessions, f, cursor, batch_size)
    states = await inputs_service.run_states_among(
        sessions, sorted({e.run_id for e in batch.events if e.run_id})
    )
    parts = [
        event_frame(e, str(render_row(event_row(e, now, run_states=states)))) for e in batch.events
    ]
    last_sent = batch.events[-1].id if batch.events else cursor
    if batch.cursor > last_sent:
        parts.append(cursor_frame(batch.cursor))
    if parts:
        await response.write("".join(parts).encode())
    return batch.cursor, batch.more
