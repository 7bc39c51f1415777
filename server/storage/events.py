"""Writes to ``update_events`` (the History). Reads live in ``server.storage.history``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import NewEvent
from server.storage.models import UpdateEvent


def _row(event: NewEvent, received_at: datetime) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "agent_id": event.agent_id,
        "category": str(event.category),
        "event_type": event.event_type,
        "status": str(event.status),
        "severity": str(event.severity),
        "message": event.message,
        "error_message": event.error_message,
        "error_detail": event.error_detail,
        "migration_from": event.migration_from,
        "migration_to": event.migration_to,
        "run_id": event.run_id,
        "system_info": event.system_info,
        "occurred_at": event.occurred_at,
        "received_at": received_at,
    }


async def insert_events(
    session: AsyncSession, events: Sequence[NewEvent], received_at: datetime
) -> int:
    """Insert ``events`` in the session's transaction, skipping any whose ``event_id`` is already
    stored (``INSERT … ON CONFLICT (event_id) DO NOTHING``). Returns the number of rows actually
    inserted. Rows go out as multi-row VALUES batches (SQLAlchemy "insertmanyvalues")."""
    return len(await insert_events_returning_ids(session, events, received_at))


async def insert_events_returning_ids(
    session: AsyncSession, events: Sequence[NewEvent], received_at: datetime
) -> set[str]:
    """Like ``insert_events`` but returns the ``event_id`` of every row actually inserted."""
    if not events:
        return set()
    dialect = session.get_bind().dialect.name
    rows = [_row(event, received_at) for event in events]
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(UpdateEvent).on_conflict_do_nothing(index_elements=["event_id"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(UpdateEvent).on_conflict_do_nothing(index_elements=["event_id"])
    else:  # pragma: no cover - only the two supported backends reach here
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    result = await session.execute(stmt.returning(UpdateEvent.event_id), rows)
    return set(result.scalars().all())
