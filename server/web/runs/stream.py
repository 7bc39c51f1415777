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
``gap_grace_seconds`` so a late line is not skipped; after that the stream moves on. Once caught
up, a stream does no database work: its run's shared reader (:mod:`server.web.runs.fanout`)
sleeps on the event bus (a wake-up only means "something was committed"), with a slow poll as
a safety net, reads at most once per ``min_interval_seconds`` for all the run's streams (a busy
run's lines are coalesced into fewer, larger writes; everything is still stored and sent) and
renders each line once. A stream behind the reader catches up with its own reads first. A
client that does not read is dropped once ``outbox_bytes`` wait for it; it reconnects with
``Last-Event-ID``. Run and History streams share the limits of :mod:`server.web.stream_limits`.
"""

from __future__ import annotations

import logging

from aiohttp import web

from server import app_keys
from server.errors import Unavailable
from server.web.live import LIVE, session_valid, stream_slot
from server.web.request import LogFilter, parse_log_filter, path_id
from server.web.runs.fanout import (
    RunFanouts,
    RunReader,
    RunRenderer,
    RunStreamSettings,
    RunSubscriber,
    lines_after,
)
from server.web.runs.pages import run_status
from server.web.sse import (
    Outbox,
    cursor_frame,
    follow,
    open_stream,
    overflow_handler,
    stream_cursor,
)

__all__ = ["RUN_STREAM_SETTINGS", "RunStreamSettings", "run_stream"]

log = logging.getLogger(__name__)

RUN_STREAM_SETTINGS = web.AppKey("run_stream_settings", RunStreamSettings)


def _fanouts(app: web.Application, settings: RunStreamSettings) -> RunFanouts:
    live = app[LIVE]
    if live.runs is None:
        live.runs = RunFanouts(app, settings, RunRenderer(app))
    return live.runs


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
    fanouts = _fanouts(app, settings)
    with stream_slot(request), bus.register_stream() as lifecycle:
        first = await run_status(app, run_id)  # NotFound: a 404 before any byte
        response = await open_stream(request, settings.retry_ms, cursor)
        status_frame = fanouts.renderer.run_frame(first)
        sub: RunSubscriber | None = None
        try:
            await response.write(status_frame.encode())
            cursor = await _catch_up(response, app, run_id, log_filter, cursor, fanouts)
            sub = RunSubscriber(log_filter, cursor, status_frame, lifecycle.wake)
            sub.written = cursor
            sub.outbox = Outbox(
                settings.outbox_bytes, lifecycle.wake, overflow_handler(request, sub, "run", "seq")
            )
            fanouts.join(run_id, sub)
            await follow(
                request,
                response,
                sub,
                lifecycle,
                name="run",
                heartbeat_seconds=settings.heartbeat_seconds,
                disconnect_check_seconds=settings.disconnect_check_seconds,
                session_valid=session_valid,
            )
        except ConnectionResetError:
            log.debug("run stream: client disconnected")
        except Unavailable:
            log.warning("run stream: database unavailable; ending the stream")
        finally:
            if sub is not None:
                fanouts.leave(run_id, sub)
    return response


async def _catch_up(
    response: web.StreamResponse,
    app: web.Application,
    run_id: str,
    log_filter: LogFilter,
    cursor: int,
    fanouts: RunFanouts,
) -> int:
    """Send the lines after ``cursor`` with the stream's own reads, up to the end of the log
    or to a gap the run's reader has not passed yet; returns the new cursor."""
    batch_size = fanouts.settings.batch_size
    while True:
        lines = await lines_after(app, run_id, cursor, batch_size)
        if not lines:
            return cursor
        reader: RunReader | None = fanouts.get(run_id)
        passed = reader.position if reader is not None else 0
        parts: list[str] = []
        examined = cursor
        for line in lines:
            if line.seq != examined + 1 and examined >= passed:
                break  # a gap the reader will hold for its grace period
            examined = line.seq
            if log_filter.matches(line):
                parts.append(fanouts.renderer.log_frame(line))
        if examined > cursor and not (parts and parts[-1].startswith(f"id: {examined}\n")):
            parts.append(cursor_frame(examined))
        if parts:
            await response.write("".join(parts).encode())
        done = examined == cursor or len(lines) < batch_size
        cursor = examined
        reader = fanouts.get(run_id)
        if done and (reader is None or cursor >= reader.position):
            return cursor
