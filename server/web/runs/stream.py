"""``GET /runs/{run_id}/stream``: a run's state, progress and new log lines as Server-Sent Events.

The cursor is the run's log ``seq`` (per run, gap-free from 1): the ``Last-Event-ID`` header (a
reconnecting EventSource), else the ``after`` parameter (the page renders the highest seq it
showed), else 0 (the whole log). Lines are always read from the database, ascending from the
cursor, so a client that reconnects gets exactly what it missed. Frames::

    event: run                   the run's status (state, progress, ETA, steps, log counts) and
    data: {"run": {...},         its HTML, rendered by the page's own macros; sent first and then
           "status_html": "...", whenever it changed. No ``id``: the cursor stays the log seq.
           "counts_html": "..."}

    id: 42                       a log line matching the page's filters (level, source, q),
    event: log                   as JSON and as the page's own <li> markup (same escaping)
    data: {"line": {...}, "html": "<li ...>"}

    id: 57                       lines up to 57 were read but did not match the filters

    : keepalive                  heartbeat comment after ``heartbeat_seconds`` of silence

A gap in the seqs (line 12 visible before line 11) holds the cursor back for up to
``gap_grace_seconds`` so a late line is not skipped; after that the stream moves on. The handler
sleeps on the event bus between reads (a wake-up only means "something was committed"), with a
slow poll as a safety net. Reads are at most one per ``min_interval_seconds`` per stream: a
busy run's lines are coalesced into fewer, larger writes (everything is still stored and sent).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from server import app_keys
from server.errors import Unavailable
from server.services import logs as logs_service
from server.web.request import LogFilter, parse_log_filter, path_id
from server.web.runs.pages import run_status
from server.web.runs.views import (
    RUNS_TEMPLATE,
    LogLineRow,
    RunDetailView,
    log_line_json,
    log_line_row,
    run_json,
)
from server.web.sessions import web_sessions
from server.web.sse import client_gone, cursor_frame, frame, heartbeat, open_stream, stream_cursor
from server.web.templates import template_macro

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunStreamSettings:
    """Tunables of the run stream (an app may override them with :data:`RUN_STREAM_SETTINGS`)."""

    heartbeat_seconds: float = 15.0
    batch_size: int = 500  # lines per database read
    retry_ms: int = 2_000  # the reconnect delay suggested to EventSource
    disconnect_check_seconds: float = 1.0
    min_interval_seconds: float = 0.1  # live rate cap: at most one read (and write) per interval
    poll_seconds: float = 5.0  # safety net: re-read an active run even without a wake-up
    gap_grace_seconds: float = 2.0  # how long a missing seq holds the cursor back


RUN_STREAM_SETTINGS = web.AppKey("run_stream_settings", RunStreamSettings)


class _Renderer:
    """The page's own Jinja macros, so streamed HTML is escaped exactly like the page."""

    def __init__(self, app: web.Application) -> None:
        self._log_line = template_macro(app, "log_line", RUNS_TEMPLATE)
        self._status = template_macro(app, "run_status", RUNS_TEMPLATE)
        self._counts = template_macro(app, "log_counts", RUNS_TEMPLATE)

    def log_frame(self, line: LogLineRow) -> str:
        data = {"line": log_line_json(line), "html": str(self._log_line(line))}
        return frame("log", data, line.seq)

    def run_frame(self, run: RunDetailView) -> str:
        data = {
            "run": run_json(run),
            "status_html": str(self._status(run)),
            "counts_html": str(self._counts(run.stats)),
        }
        return frame("run", data)


@dataclass
class _StreamState:
    cursor: int
    last_status: str = ""  # the last run frame sent (to send only changes)
    gap_since: float | None = None  # loop time a gap was first seen
    terminal: bool = False


async def run_stream(request: web.Request) -> web.StreamResponse:
    """``GET /runs/{run_id}/stream`` (see the module docstring)."""
    app = request.app
    run_id = path_id(request, "run_id")
    log_filter = parse_log_filter(request.query)
    cursor = stream_cursor(request.headers, request.query) or 0
    bus = app.get(app_keys.BUS)
    if bus is None:
        raise Unavailable("live updates are not enabled on this server")
    settings = app.get(RUN_STREAM_SETTINGS) or RunStreamSettings()
    renderer = _Renderer(app)
    loop = asyncio.get_running_loop()

    # Subscribe before the first read: a commit after it always wakes us.
    with bus.subscribe_run(run_id) as sub:
        first = await run_status(app, run_id)  # NotFound: a 404 before any byte
        response = await open_stream(request, settings.retry_ms, cursor)
        state = _StreamState(cursor=cursor)
        try:
            last_write = loop.time()
            next_read = 0.0
            must_read = True
            status: RunDetailView | None = first
            while not sub.closed:
                now = loop.time()
                if must_read and now < next_read:  # the rate cap: coalesce wake-ups
                    await asyncio.sleep(next_read - now)
                if must_read:
                    wrote = await _send_updates(
                        response, app, run_id, log_filter, state, settings, renderer, status
                    )
                    status = None
                    next_read = loop.time() + settings.min_interval_seconds
                    if wrote:
                        last_write = loop.time()
                silent = loop.time() - last_write
                if silent >= settings.heartbeat_seconds:
                    if not await heartbeat(request, response, "run"):
                        break
                    last_write = loop.time()
                    silent = 0.0
                if client_gone(request):
                    break
                wait = min(
                    settings.heartbeat_seconds - silent,
                    settings.disconnect_check_seconds,
                    _poll_wait(state, settings, loop.time()),
                )
                woke = await sub.wait(max(wait, 0.0))
                if sub.closed:
                    break
                if woke:
                    sub.take(-1)  # run wake-ups carry no cursor: always read
                must_read = woke or _poll_due(state, settings, loop.time(), next_read)
        except ConnectionResetError:
            log.debug("run stream: client disconnected")
        except Unavailable:
            log.warning("run stream: database unavailable; ending the stream")
    return response


def _poll_wait(state: _StreamState, settings: RunStreamSettings, now: float) -> float:
    if state.gap_since is not None:
        return max(0.05, settings.gap_grace_seconds / 4)
    return settings.poll_seconds if not state.terminal else settings.heartbeat_seconds


def _poll_due(
    state: _StreamState, settings: RunStreamSettings, now: float, last_read: float
) -> bool:
    """Re-read without a wake-up: while a gap is pending, or (slowly) while the run is active."""
    if state.gap_since is not None:
        return True
    return not state.terminal and now - last_read >= settings.poll_seconds


async def _send_updates(
    response: web.StreamResponse,
    app: web.Application,
    run_id: str,
    log_filter: LogFilter,
    state: _StreamState,
    settings: RunStreamSettings,
    renderer: _Renderer,
    status: RunDetailView | None,
) -> bool:
    """Send the run's status if it changed, then every new line (in batches); True when
    anything was written."""
    loop = asyncio.get_running_loop()
    parts: list[str] = []
    if status is None:
        status = await run_status(app, run_id)
    status_frame = renderer.run_frame(status)
    if status_frame != state.last_status:
        parts.append(status_frame)
        state.last_status = status_frame
    state.terminal = status.terminal
    while True:
        lines = await _lines_after(app, run_id, state.cursor, settings.batch_size)
        examined = state.cursor
        held = False
        for line in lines:
            if line.seq != examined + 1:
                # A gap: hold the cursor until the missing line shows up or the grace ends.
                now = loop.time()
                if state.gap_since is None:
                    state.gap_since = now
                if now - state.gap_since < settings.gap_grace_seconds:
                    held = True
                    break
                log.info("run %s: log seq %d never arrived; moving on", run_id, examined + 1)
            state.gap_since = None
            examined = line.seq
            if log_filter.matches(line):
                parts.append(renderer.log_frame(line))
        if examined > state.cursor and not (parts and parts[-1].startswith(f"id: {examined}\n")):
            parts.append(cursor_frame(examined))  # read past lines that did not match
        state.cursor = examined
        if held or len(lines) < settings.batch_size:
            break
    if parts:
        await response.write("".join(parts).encode())
        return True
    return False


async def _lines_after(
    app: web.Application, run_id: str, after_seq: int, limit: int
) -> list[LogLineRow]:
    """Every stored line of the run with ``seq > after_seq``, ascending, at most ``limit``."""
    records = await logs_service.lines_after(web_sessions(app), run_id, after_seq, limit)
    return [log_line_row(r) for r in records]
