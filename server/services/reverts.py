"""Whether a spec run was put back already (the run page offers Revert only until then).

Services own the transaction; database outages become :class:`server.errors.Unavailable`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.domain import RunSummary
from server.services.health import unavailable_on_outage
from server.storage import runs as runs_store


async def reverted_by(sessions: async_sessionmaker[AsyncSession], run_id: str) -> RunSummary | None:
    """The succeeded revert run of ``run_id``, or None while it has none."""
    with unavailable_on_outage("revert lookup"):
        async with sessions() as session:
            return await runs_store.reverted_by(session, run_id.lower())
