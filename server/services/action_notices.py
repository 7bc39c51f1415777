"""Why an agent did not do what a spec action asked (for the migrations pages, which would
otherwise wait for a preview or run that never comes): it refused the action (a notice), or
its host is already at the target (a ``not_needed`` detection, no run).

Services own the transaction; database outages become :class:`server.errors.Unavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.domain import EventStatus, EventType
from server.services.health import unavailable_on_outage
from server.storage import action_notices as notices_store


class Unanswered(StrEnum):
    """How an agent ended an action without the preview or run it asked for."""

    REFUSED = "refused"
    NOT_NEEDED = "not_needed"


@dataclass(frozen=True, slots=True)
class ActionEnd:
    """What the agent reported instead (``message``: its own words)."""

    kind: Unanswered
    message: str


async def action_end(
    sessions: async_sessionmaker[AsyncSession], agent_id: str, action_id: str
) -> ActionEnd | None:
    """The agent's notice refusing ``action_id`` (``Action … refused: …``), or its detection
    saying there is nothing to do; None when it reported neither (yet)."""
    with unavailable_on_outage("action answer"):
        async with sessions() as session:
            answers = await notices_store.answers_for_action(session, agent_id, action_id.lower())
    for event_type, status, message in answers:
        if event_type == EventType.AGENT_NOTICE:
            return ActionEnd(Unanswered.REFUSED, message or "the agent did not take the action")
        if status == EventStatus.NOT_NEEDED:
            return ActionEnd(Unanswered.NOT_NEEDED, message or "already at the target version")
    return None
