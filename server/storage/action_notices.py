"""Read query of the events that answer a spec action without doing it: an agent refusing the
action reports an ``agent_notice`` carrying the action id; one whose host is already at the
target answers ``run_migration`` with a ``migration_detection`` event and reports no run.

Plain values out, never ORM rows.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import EventType
from server.storage.models import UpdateEvent

_ANSWERS = (EventType.AGENT_NOTICE.value, EventType.MIGRATION_DETECTION.value)


async def answers_for_action(
    session: AsyncSession, agent_id: str, action_id: str
) -> list[tuple[str, str, str]]:
    """``(event_type, status, message)`` of ``agent_id``'s notices and detection events about
    ``action_id``, newest first (at most 5)."""
    query = (
        select(
            UpdateEvent.event_type,
            UpdateEvent.status,
            UpdateEvent.message,
            UpdateEvent.error_message,
        )
        .where(
            # literal, so the planner can use the partial index ix_update_events_action_id
            text("update_events.action_id != ''"),
            UpdateEvent.action_id == action_id,
            UpdateEvent.agent_id == agent_id,
            UpdateEvent.event_type.in_(_ANSWERS),
        )
        .order_by(UpdateEvent.id.desc())
        .limit(5)
    )
    return [
        (str(row.event_type), str(row.status), str(row.message or row.error_message or ""))
        for row in await session.execute(query)
    ]
