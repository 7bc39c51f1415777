"""Why an agent did not do what a spec action asked: the notice it reported instead (for the
migrations pages, which otherwise would wait for a preview or run that never comes).

Services own the transaction; database outages become :class:`server.errors.Unavailable`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.services.health import unavailable_on_outage
from server.storage import action_notices as notices_store


async def refusal(
    sessions: async_sessionmaker[AsyncSession], agent_id: str, action_id: str
) -> str | None:
    """The agent's notice about ``action_id`` (e.g. ``Action … refused: spec myapp revision 1:
    /srv/x is outside the allowed paths``), or None when it reported none."""
    with unavailable_on_outage("action notice"):
        async with sessions() as session:
            return await notices_store.notice_for_action(session, agent_id, action_id.lower())
