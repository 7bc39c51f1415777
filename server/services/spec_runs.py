"""What the migrations pages look up about a spec run they requested: the run it became.

Services own the transaction; database outages become :class:`server.errors.Unavailable`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.services.health import unavailable_on_outage
from server.storage import spec_runs as spec_runs_store


async def run_for_action(
    sessions: async_sessionmaker[AsyncSession], agent_id: str, action_id: str
) -> str | None:
    """The id of the run ``agent_id`` reported for the ``run_migration`` action ``action_id``;
    None until the agent has reported it (the web's "waiting for the agent" state)."""
    with unavailable_on_outage("run lookup"):
        async with sessions() as session, session.begin():
            return await spec_runs_store.run_started_by(session, agent_id, action_id)
