"""Read query of the agent notices that answer an action (an agent refusing a spec action
reports an ``agent_notice`` event carrying the action id instead of doing it).

Plain values out, never ORM rows.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import EventType
from server.storage.models import UpdateEvent


async def notice_for_action(session: AsyncSession, agent_id: str, action_id: str) -> str | None:
    """The message of the newest ``agent_notice`` event of ``agent_id`` about ``action_id``,
    or None."""
    query = (
        select(UpdateEvent.message, UpdateEvent.error_message)
        .where(
            UpdateEvent.agent_id == agent_id,
            UpdateEvent.action_id == action_id,
            UpdateEvent.event_type == EventType.AGENT_NOTICE.value,
        )
        .order_by(UpdateEvent.id.desc())
        .limit(1)
    )
    row = (await session.execute(query)).first()
    if row is None:
        return None
    return str(row.message or row.error_message or "the agent did not take the action")
