"""Read queries of run logs (``task_logs``): filtered pages in seq order, counts, sources.

Every query is scoped to one run and served by the ``(run_id, seq)`` unique index or its
``(run_id, level, seq)`` sibling (a source filter walks the run's lines in seq order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import LogLineRecord
from server.storage.models import TaskLog

_COLUMNS = (
    TaskLog.run_id,
    TaskLog.seq,
    TaskLog.timestamp,
    TaskLog.level,
    TaskLog.source,
    TaskLog.message,
    TaskLog.metadata_json,
)


def _record(row: Any) -> LogLineRecord:
    meta = row.metadata_json or {}
    return LogLineRecord(
        run_id=row.run_id,
        seq=int(row.seq),
        timestamp=row.timestamp,
        level=row.level,
        source=row.source,
        message=row.message,
        metadata={str(k): str(v) for k, v in meta.items()},
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def query_lines(
    session: AsyncSession,
    run_id: str,
    *,
    levels: Sequence[str] = (),
    sources: Sequence[str] = (),
    text: str | None = None,
    after_seq: int = 0,
    limit: int = 500,
) -> list[LogLineRecord]:
    """Up to ``limit`` lines of ``run_id`` with ``seq > after_seq`` matching the filters
    (levels / sources: any of; text: case-insensitive substring of the message), by seq."""
    query = select(*_COLUMNS).where(TaskLog.run_id == run_id, TaskLog.seq > after_seq)
    if levels:
        query = query.where(TaskLog.level.in_(list(levels)))
    if sources:
        query = query.where(TaskLog.source.in_(list(sources)))
    if text:
        # Both sides lowered by the database: SQLite's lower() folds ASCII only, so a pattern
        # lowered in Python would miss a literal match on non-ASCII capitals.
        pattern = func.lower(literal(f"%{_escape_like(text)}%"))
        query = query.where(func.lower(TaskLog.message).like(pattern, escape="\\"))
    query = query.order_by(TaskLog.seq).limit(limit)
    return [_record(row) for row in await session.execute(query)]


async def count_lines(session: AsyncSession, run_id: str) -> int:
    """Lines stored for ``run_id``."""
    result = await session.execute(
        select(func.count()).select_from(TaskLog).where(TaskLog.run_id == run_id)
    )
    return int(result.scalar_one())


async def counts_by(session: AsyncSession, run_id: str, column: str) -> dict[str, int]:
    """Lines of ``run_id`` counted by ``column`` (``"level"`` or ``"source"``)."""
    key = TaskLog.level if column == "level" else TaskLog.source
    result = await session.execute(
        select(key, func.count()).where(TaskLog.run_id == run_id).group_by(key)
    )
    return {str(name): int(n) for name, n in result}
