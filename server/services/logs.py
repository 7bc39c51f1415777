"""Run logs service: the log viewer's filtered pages, counts by level and source, sources.

Lines are stored by the ingest writer (``server.storage.run_ingest``) and only ever read here,
so whatever a page or stream shows is saved.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.domain import LogLineRecord, LogPage, LogQuery, LogStats
from server.errors import InvalidArgument, NotFound
from server.services.health import unavailable_on_outage
from server.storage import logs as logs_store
from server.storage import runs as runs_store

MAX_LIMIT = 5_000


async def _require_run(session: AsyncSession, run_id: str) -> None:
    if await runs_store.get_run(session, run_id) is None:
        raise NotFound(f"no run {run_id}")


async def query_logs(
    sessions: async_sessionmaker[AsyncSession], run_id: str, q: LogQuery
) -> LogPage:
    """Lines of ``run_id`` with ``seq > q.after_seq`` matching ``q`` (levels and sources: any
    of, exact; text: case-insensitive substring of the message), ascending seq, at most
    ``q.limit``. ``next_after_seq`` is set when the page is full (there may be more)."""
    if not 1 <= q.limit <= MAX_LIMIT:
        raise InvalidArgument(f"must be between 1 and {MAX_LIMIT}", field="limit")
    if q.after_seq < 0:
        raise InvalidArgument("must not be negative", field="after_seq")
    run_id = run_id.lower()
    with unavailable_on_outage("query logs"):
        async with sessions() as session:
            await _require_run(session, run_id)
            lines = await logs_store.query_lines(
                session,
                run_id,
                levels=tuple(level.upper() for level in q.levels),
                sources=q.sources,
                text=q.text or None,
                after_seq=q.after_seq,
                limit=q.limit,
            )
    return LogPage(lines=lines, next_after_seq=lines[-1].seq if len(lines) == q.limit else None)


async def lines_after(
    sessions: async_sessionmaker[AsyncSession], run_id: str, after_seq: int, limit: int
) -> list[LogLineRecord]:
    """Every line of ``run_id`` with ``seq > after_seq``, ascending, at most ``limit`` (the
    live stream's read: no filters, no existence check)."""
    with unavailable_on_outage("read log lines"):
        async with sessions() as session:
            return await logs_store.query_lines(
                session, run_id.lower(), after_seq=after_seq, limit=limit
            )


async def log_stats(sessions: async_sessionmaker[AsyncSession], run_id: str) -> LogStats:
    """Counts of the run's lines by level and by source. NotFound for an unknown run."""
    run_id = run_id.lower()
    with unavailable_on_outage("log stats"):
        async with sessions() as session:
            await _require_run(session, run_id)
            by_level = await logs_store.counts_by(session, run_id, "level")
            by_source = await logs_store.counts_by(session, run_id, "source")
    return LogStats(total=sum(by_level.values()), by_level=by_level, by_source=by_source)


async def log_sources(sessions: async_sessionmaker[AsyncSession], run_id: str) -> list[str]:
    """The distinct sources of the run's lines, sorted. NotFound for an unknown run."""
    run_id = run_id.lower()
    with unavailable_on_outage("log sources"):
        async with sessions() as session:
            await _require_run(session, run_id)
            counts = await logs_store.counts_by(session, run_id, "source")
    return sorted(counts)
