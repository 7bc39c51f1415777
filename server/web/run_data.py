"""What the run pages and the run stream read: calls the runs and logs services and builds
view models (:mod:`server.web.run_views`). No SQL here."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from server import app_keys
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.web.run_views import LogLineRow, RunDetailView, log_line_row, run_detail_view


async def run_status(app: web.Application, run_id: str) -> RunDetailView:
    """The run's status block (state, progress, ETA, steps, log counts). Raises NotFound."""
    sessions = app[app_keys.SESSIONS]
    now = datetime.now(UTC)
    detail = await runs_service.get_run(sessions, run_id, now)
    stats = await logs_service.log_stats(sessions, run_id)
    return run_detail_view(detail, stats, now)


async def lines_after(
    app: web.Application, run_id: str, after_seq: int, limit: int
) -> list[LogLineRow]:
    """Every stored line of the run with ``seq > after_seq``, ascending, at most ``limit``."""
    records = await logs_service.lines_after(app[app_keys.SESSIONS], run_id, after_seq, limit)
    return [log_line_row(r) for r in records]
