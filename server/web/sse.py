"""Server-Sent Events: what every live stream (History, run) shares.

A stream's cursor is resumable: the client's ``Last-Event-ID`` header (a reconnecting
EventSource), else the ``after`` query parameter (the page renders the cursor it showed), else
the stream's own default. Rows are always read from the database ascending from the cursor, so
a client that reconnects gets exactly what it missed; an ``id:``-only frame moves the client's
cursor past rows that were read but did not match its filters.

Why not ``aiohttp-sse``: its ``EventSourceResponse`` sends one event per ``send()`` and pings on
its own timer. Our streams coalesce a batch of frames into one write, write ``id:``-only frames,
and make the heartbeat the moment to re-check the session (:func:`heartbeat`): a library would
leave only the header block below, at the price of a dependency.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from server import app_keys
from server.errors import InvalidArgument
from server.web.auth import session_still_valid
from server.web.request import MAX_CURSOR

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",
}


def _parse_cursor(name: str, raw: str) -> int:
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_CURSOR:
        raise InvalidArgument(f"must be an event id between 0 and {MAX_CURSOR}", field=name)
    return int(text)


def stream_cursor(headers: MultiMapping[str], query: MultiMapping[str]) -> int | None:
    """The client's cursor: ``Last-Event-ID``, else ``after``, else ``None`` (the stream's
    default). A malformed value is an InvalidArgument naming it."""
    last_event_id = headers.get("Last-Event-ID", "")
    if last_event_id.strip():
        return _parse_cursor("Last-Event-ID", last_event_id)
    after = query.getall("after", [])
    if len(after) > 1:
        raise InvalidArgument("must be given at most once", field="after")
    if after and after[0].strip():
        return _parse_cursor("after", after[0])
    return None


async def open_stream(request: web.Request, retry_ms: int, cursor: int) -> web.StreamResponse:
    """Send the headers and the preamble (the reconnect delay, and the cursor as a comment)."""
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    await response.write(f"retry: {retry_ms}\n: after {cursor}\n\n".encode())
    return response


def dumps(value: Any) -> str:
    """Compact JSON for a ``data:`` line (never contains a newline)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def frame(event: str, data: Any, event_id: int | None = None) -> str:
    """One event: ``id`` (when given), ``event`` and its JSON ``data``."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {dumps(data)}\n\n"


def cursor_frame(event_id: int) -> str:
    """An ``id:``-only frame: moves the client's ``Last-Event-ID`` without an event."""
    return f"id: {event_id}\n\n"


def client_gone(request: web.Request) -> bool:
    """The stream's client disconnected."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def heartbeat(request: web.Request, response: web.StreamResponse, name: str) -> bool:
    """A live stream's heartbeat: False (end the stream) when the session that opened it has
    ended (logged out, expired, its user deleted or disabled); otherwise the keepalive comment
    is written and True returned."""
    if not await session_still_valid(request):
        log.info("%s stream: the session ended; closing the stream", name)
        return False
    await response.write(b": keepalive\n\n")
    return True


async def end_streams_on_shutdown(app: web.Application) -> None:
    """``on_shutdown`` hook: end live streams before aiohttp waits for open requests."""
    bus = app.get(app_keys.BUS)
    if bus is not None:
        bus.end_streams()
