"""Actions service: what is queued for an agent.

Actions are created by ``server.services.runs`` (request a run, cancel a run), handed to the
agent in every check-in response until it acknowledges them or they expire, and marked
delivered / acknowledged inside the ingest transaction (``server.storage.run_ingest``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.domain import PendingAction
from server.services.health import unavailable_on_outage
from server.storage import actions as actions_store


async def list_pending_actions(
    sessions: async_sessionmaker[AsyncSession], agent_id: str, now: datetime | None = None
) -> list[PendingAction]:
    """The agent's unacknowledged, unexpired actions, oldest first."""
    with unavailable_on_outage("list actions"):
        async with sessions() as session:
            return await actions_store.open_actions(session, agent_id, now or datetime.now(UTC))


async def get_action(
    sessions: async_sessionmaker[AsyncSession], action_id: str
) -> PendingAction | None:
    """One action (delivered / acknowledged times included), or None."""
    with unavailable_on_outage("get action"):
        async with sessions() as session:
            return await actions_store.get_action(session, action_id)
