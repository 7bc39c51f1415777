"""Server-Sent Events: what every live stream (History, run) shares.

A stream's cursor is resumable: the client's ``Last-Event-ID`` header (a reconnecting
EventSource), else the ``after`` query parameter (the page renders the cursor it showed), else
the stream's own default. Rows are always read from the database ascending from the cursor, so
a client that reconnects gets exactly what it missed; an ``id:``-only frame moves the client's
cursor past rows that were read but did not match its filters.

Live streams do no database work of their own once caught up: one shared reader per topic
(``server.web.history.fanout``, ``server.web.runs.fanout``) reads new rows once per wake-up,
renders each once and hands the frames to every open stream's :class:`Outbox`, a bounded
buffer. A stream whose client does not drain it (the buffer overflows) is ended at once: its
client reconnects with ``Last-Event-ID`` and reads what it missed from the database.

Why not ``aiohttp-sse``: its ``EventSourceResponse`` sends one event per ``send()`` and pings on
its own timer. Our streams coalesce a batch of frames into one write, write ``id:``-only frames,
and make the heartbeat the moment to re-check the session (:func:`heartbeat`): a library would
leave only the header block below, at the price of a dependency.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from multidict import MultiMapping

from server import app_keys
from server.errors import InvalidArgument
from server.services.bus import Subscription
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


class Outbox:
    """One stream's bounded outgoing buffer, filled by its shared reader and drained by the
    stream's handler. A ``put`` while the handler has not yet taken what was put before, and
    that would make it more than ``limit_bytes``, overflows it: the buffer is dropped and
    ``on_overflow`` called once (the handler ends the stream). So a stream holds at most
    ``limit_bytes`` plus one batch."""

    __slots__ = ("_on_overflow", "_parts", "_size", "_wake", "limit_bytes", "overflowed")

    def __init__(
        self, limit_bytes: int, wake: Callable[[], None], on_overflow: Callable[[int], None]
    ) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.limit_bytes = limit_bytes
        self.overflowed = False
        self._wake = wake
        self._on_overflow = on_overflow

    def put(self, data: bytes) -> bool:
        """Queue ``data`` and wake the handler; False (and nothing queued) once overflowed."""
        if self.overflowed:
            return False
        if self._size and self._size + len(data) > self.limit_bytes:
            self.overflowed = True
            pending = self._size + len(data)
            self._parts.clear()
            self._size = 0
            self._on_overflow(pending)
            self._wake()
            return False
        self._parts.append(data)
        self._size += len(data)
        self._wake()
        return True

    def take(self) -> bytes:
        """Everything queued, as one write (empty when nothing is)."""
        if not self._parts:
            return b""
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return data

    @property
    def pending_bytes(self) -> int:
        return self._size


def drop_slow_client(request: web.Request) -> None:
    """End a stream whose client stopped reading: abort the connection (a graceful close would
    wait for the client to read what the kernel still holds); its handler's pending write then
    fails with ``ConnectionResetError``."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def client_gone(request: web.Request) -> bool:
    """The stream's client disconnected."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def heartbeat(
    request: web.Request,
    response: web.StreamResponse,
    name: str,
    still_valid: Callable[[web.Request], Awaitable[bool]] = session_still_valid,
) -> bool:
    """A live stream's heartbeat: False (end the stream) when the session that opened it has
    ended (logged out, expired, its user deleted or disabled; asked through ``still_valid``);
    otherwise the keepalive comment is written and True returned."""
    if not await still_valid(request):
        log.info("%s stream: the session ended; closing the stream", name)
        return False
    await response.write(b": keepalive\n\n")
    return True


async def end_streams_on_shutdown(app: web.Application) -> None:
    """``on_shutdown`` hook: end live streams before aiohttp waits for open requests."""
    bus = app.get(app_keys.BUS)
    if bus is not None:
        bus.end_streams()


class Follower(Protocol):
    """A stream as its shared reader feeds it (``HistorySubscriber``, ``RunSubscriber``)."""

    cursor: int  # handed to the outbox up to here
    written: int  # written to the response up to here
    ended: bool
    reason: str
    outbox: Outbox

    def end(self, reason: str) -> None: ...


def overflow_handler(
    request: web.Request, sub: Follower, name: str, unit: str
) -> Callable[[int], None]:
    """The outbox's overflow callback: log once with the stream's cursor, end it, drop the
    client (it resumes from its ``Last-Event-ID``)."""

    def overflow(pending: int) -> None:
        log.info(
            "%s stream: the client is not reading (%d bytes waiting); ending the stream after "
            "%s %d (it resumes from its Last-Event-ID)",
            name,
            pending,
            unit,
            sub.written,
        )
        sub.end("slow client")
        drop_slow_client(request)

    return overflow


async def follow(
    request: web.Request,
    response: web.StreamResponse,
    sub: Follower,
    lifecycle: Subscription,
    *,
    name: str,
    heartbeat_seconds: float,
    disconnect_check_seconds: float,
    session_valid: Callable[[web.Request], Awaitable[bool]],
) -> None:
    """Write what the shared reader hands over, heartbeat in silence, until the stream ends
    (its reader ended it, the app shuts down, the client left or its session ended)."""
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    while True:
        data = sub.outbox.take()
        if data and not sub.ended:
            written = sub.cursor
            await response.write(data)
            sub.written = written
            last_write = loop.time()
        if sub.ended or lifecycle.closed:
            if sub.reason == "database unavailable":
                log.warning("%s stream: database unavailable; ending the stream", name)
            return
        silent = loop.time() - last_write
        if silent >= heartbeat_seconds:
            if not await heartbeat(request, response, name, session_valid):
                return
            last_write = loop.time()
            continue
        if client_gone(request):
            return
        wait = min(heartbeat_seconds - silent, disconnect_check_seconds)
        if await lifecycle.wait(wait):
            lifecycle.take(0)
