"""Exports: the History and the runs list as CSV or JSON lines, streamed
(``GET /api/v1/events/export``, ``GET /api/v1/runs/export``).

An export takes the same filters as its list (``server.web.request``), and its rows are the
list's JSON shapes (``server.web.api.shapes``: ``event_json`` / ``run_json``), so an export shows
exactly what the API shows (secrets never reach either). JSON lines: one shape per line. CSV
(the stdlib ``csv`` module): a header row of the shape's field names, then one row per item;
objects (``error_detail``, ``system_info``) as compact JSON, ``null`` as an empty cell, and any
text cell starting with ``= + - @`` (or a tab / carriage return) gets a leading ``'`` so a
spreadsheet never evaluates it as a formula.

Streaming: the rows are read in keyset-paged chunks through the list's own service call (one
short transaction per chunk, its connection back in the pool before the chunk is written), and
each chunk is written before the next is read, so the server holds one chunk at a time whatever
the export's size; aiohttp's write waits while the client's socket buffer is full. The first
chunk is read before any byte is sent, so a bad cursor (400) or an unreachable database (503)
is still a proper error answer. Rows newer than the export's start are not included (they sort
above the first chunk's keyset position).

Endings: a client that goes away ends the export at its next write (no further query); a
client that stops reading for ``WRITE_TIMEOUT_SECONDS`` is dropped, and so is one whose session
ended (logged out, expired, disabled: checked every ``SESSION_CHECK_SECONDS``, as live streams
check at their heartbeat); a failure mid-export (the database went away) aborts the connection
without the chunked body's terminator, so the download shows as failed rather than as a
complete, truncated file.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar

from aiohttp import web

from server import app_keys
from server.services import history as history_service
from server.services import runs as runs_service
from server.web.api.shapes import Event, Run, event_json, run_json
from server.web.auth import session_still_valid
from server.web.request import parse_event_export, parse_run_export
from server.web.sessions import web_sessions

log = logging.getLogger(__name__)

EVENT_CHUNK_ROWS = 1000
RUN_CHUNK_ROWS = runs_service.MAX_LIST_LIMIT
WRITE_TIMEOUT_SECONDS = 60.0
SESSION_CHECK_SECONDS = 30.0  # a long export re-checks its session this often, like a stream
EVENT_FIELDS: Final[tuple[str, ...]] = tuple(Event.__annotations__)
RUN_FIELDS: Final[tuple[str, ...]] = tuple(Run.__annotations__)
CONTENT_TYPES: Final[dict[str, str]] = {
    "csv": "text/csv; charset=utf-8; header=present",
    "jsonl": "application/x-ndjson; charset=utf-8",
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_json_cell = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode

C = TypeVar("C")
Item = Mapping[str, Any]
ReadChunk = Callable[[C | None], Awaitable[tuple[Sequence[Item], C | None]]]


def csv_cell(value: Any) -> str:
    """One CSV cell: ``None`` empty, booleans ``true``/``false``, numbers as written, objects as
    compact JSON; text starting like a formula gets a leading ``'``."""
    if isinstance(value, str):  # most cells: checked first
        return "'" + value if value.startswith(_FORMULA_START) else value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list):
        return _json_cell(value)  # starts with { or [: never a formula
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class Encoder(Protocol):
    def start(self) -> bytes: ...
    def rows(self, items: Sequence[Item]) -> bytes: ...


class CsvEncoder:
    """A header row of ``fields``, then one row per item (RFC 4180 quoting, CRLF)."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)

    def _take(self) -> bytes:
        data = self._buffer.getvalue().encode("utf-8")
        self._buffer.seek(0)
        self._buffer.truncate()
        return data

    def start(self) -> bytes:
        self._writer.writerow(self.fields)
        return self._take()

    def rows(self, items: Sequence[Item]) -> bytes:
        fields = self.fields
        self._writer.writerows([csv_cell(item[name]) for name in fields] for item in items)
        return self._take()


class JsonLinesEncoder:
    """One compact JSON object per line (UTF-8, ``\\n``)."""

    def start(self) -> bytes:
        return b""

    def rows(self, items: Sequence[Item]) -> bytes:
        return "".join(
            json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n" for item in items
        ).encode("utf-8")


def export_filename(name: str, fmt: str, started: datetime) -> str:
    """``flagpost-<name>-<UTC time>.<fmt>``, e.g. ``flagpost-history-20261203T061500Z.csv``."""
    return f"flagpost-{name}-{started.astimezone(UTC):%Y%m%dT%H%M%SZ}.{fmt}"


class SessionEnded(Exception):
    """The session that started an export was logged out, expired or disabled."""


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def stream_export(
    request: web.Request,
    name: str,
    fmt: str,
    fields: Sequence[str],
    read: ReadChunk[C],
    cursor: C | None,
) -> web.StreamResponse:
    """Stream every chunk ``read`` returns, from ``cursor`` until it returns no next cursor."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    items, cursor = await read(cursor)  # 400 / 503 while an error answer is still possible
    encoder: Encoder = CsvEncoder(fields) if fmt == "csv" else JsonLinesEncoder()
    filename = export_filename(name, fmt, started)
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPES[fmt],
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    rows = 0
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
            await response.write(encoder.start() + encoder.rows(items))
        rows += len(items)
        checked = time.monotonic()
        while cursor is not None:
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the client went away")
            if time.monotonic() - checked >= SESSION_CHECK_SECONDS:
                if not await session_still_valid(request):
                    raise SessionEnded
                checked = time.monotonic()
            items, cursor = await read(cursor)
            count, data = len(items), encoder.rows(items)
            del items  # hold one chunk at a time: the encoded one
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await response.write(data)
            rows += count
    except ConnectionResetError:
        log.info("%s export %s: the client went away after %d rows", name, filename, rows)
        return response
    except SessionEnded:
        log.info("%s export %s: the session ended after %d rows", name, filename, rows)
        _abort(request)
        return response
    except TimeoutError:
        log.info("%s export %s: the client stopped reading after %d rows", name, filename, rows)
        _abort(request)
        return response
    except Exception as exc:  # the answer has started: end it visibly incomplete
        log.warning(
            "%s export %s failed after %d rows (%s); connection aborted",
            name,
            filename,
            rows,
            type(exc).__name__,
        )
        _abort(request)
        return response
    await response.write_eof()
    log.info("%s export %s: %d rows in %.1f s", name, filename, rows, time.monotonic() - clock)
    return response


async def export_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events/export``: the History matching the History's filters."""
    config = request.app[app_keys.CONFIG]
    fmt, f = parse_event_export(request.query, config.history_page_size)
    sessions = web_sessions(request.app)
    chunk = replace(f, limit=EVENT_CHUNK_ROWS)

    async def read(before: int | None) -> tuple[list[Event], int | None]:
        page = await history_service.list_events(sessions, replace(chunk, before_id=before))
        return [event_json(e) for e in page.events], page.next_before_id

    return await stream_export(request, "history", fmt, EVENT_FIELDS, read, f.before_id)


async def export_runs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/export``: the runs matching the runs list's filters."""
    fmt, f = parse_run_export(request.query)
    sessions = web_sessions(request.app)
    chunk = replace(f, limit=RUN_CHUNK_ROWS)
    now = datetime.now(UTC)  # one "now" for every running run's duration

    async def read(before: str | None) -> tuple[list[Run], str | None]:
        page = await runs_service.list_runs(sessions, replace(chunk, before=before))
        return [run_json(r, now) for r in page.runs], page.next_before

    return await stream_export(request, "runs", fmt, RUN_FIELDS, read, f.before)
