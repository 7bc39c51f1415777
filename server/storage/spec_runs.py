"""Read query the migrations pages need beside the specs storage: the run an action started.

Plain values out, never ORM rows.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.models import MigrationRun


async def run_started_by(session: AsyncSession, agent_id: str, action_id: str) -> str | None:
    """The id of the run ``agent_id`` started for action ``action_id`` (the run's
    ``requested_action_id``), or None while the agent has not reported it."""
    query = (
        select(MigrationRun.id)
        .where(MigrationRun.agent_id == agent_id, MigrationRun.requested_action_id == action_id)
        .order_by(MigrationRun.created_at)
        .limit(1)
    )
    return (await session.scalars(query)).first()
