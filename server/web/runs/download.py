"""``GET /runs/{run_id}/log.txt`` and ``/runs/{run_id}/log.jsonl``: a run's whole log as a
download (the log viewer's "Download" links), streamed page by page.

Each page of up to ``logs_service.MAX_LIMIT`` lines is one short read (``query_logs``: its own
session), written before the next is read, so memory stays bounded by a page whatever the log's
size and no database connection is held while the client reads. The JSON lines carry the API's
``LogLine`` shape (``server.web.api.shapes``); the text form is one line per log line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC

from aiohttp import web

from server.domain import LogLineRecord, LogQuery
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.web.api.shapes import log_line_json
from server.web.request import path_id
from server.web.sessions import web_sessions


def _text_line(line: LogLineRecord) -> str:
    stamp = line.timestamp.astimezone(UTC).isoformat(timespec="milliseconds")
    meta = "".join(f" {key}={value}" for key, value in sorted(line.metadata.items()))
    message = line.message.replace("\r", "\\r").replace("\n", "\\n")
    return f"{line.seq}\t{stamp}\t{line.level}\t{line.source}\t{message}{meta}\n"


def _json_line(line: LogLineRecord) -> str:
    return json.dumps(log_line_json(line), ensure_ascii=False, separators=(",", ":")) + "\n"


async def _download(
    request: web.Request, suffix: str, content_type: str, render: Callable[[LogLineRecord], str]
) -> web.StreamResponse:
    run_id = path_id(request, "run_id")
    sessions = web_sessions(request.app)
    run = await runs_service.get_run(sessions, run_id)  # 404 before anything is sent
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{content_type}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="run-{run.run.id}.{suffix}"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    after = 0
    while True:
        page = await logs_service.query_logs(
            sessions, run_id, LogQuery(after_seq=after, limit=logs_service.MAX_LIMIT)
        )
        if page.lines:
            await response.write("".join(render(line) for line in page.lines).encode())
        if page.next_after_seq is None:
            break
        after = page.next_after_seq
    await response.write_eof()
    return response


async def log_text(request: web.Request) -> web.StreamResponse:
    """``GET /runs/{run_id}/log.txt``: seq, time (UTC), level, source, message; tab-separated."""
    return await _download(request, "log", "text/plain", _text_line)


async def log_jsonl(request: web.Request) -> web.StreamResponse:
    """``GET /runs/{run_id}/log.jsonl``: one ``LogLine`` JSON object per line."""
    return await _download(request, "jsonl", "application/x-ndjson", _json_line)
