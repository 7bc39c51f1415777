"""Bulk actions on many agents (``POST /api/v1/agents/bulk``, the fleet page's agent list):
one request names the action, the agents (a selector or ids, at most ``MAX_BULK_AGENTS``) and
the action's arguments; each action is the service function of its own module, which owns its
transaction: ``specs.request_runs``, ``runs.cancel_runs_of``, ``targets.change_tags_of``,
``agents.revoke_agents``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import BulkAction, BulkOutcome
from server.errors import InvalidArgument
from server.selectors import validate_tag
from server.services import agents, runs, specs, targets
from server.services.bus import EventBus


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """A bulk action: what, on which agents, with which arguments (``spec_id`` and
    ``revision`` for ``run_spec``, ``tags`` for ``add_tags`` / ``remove_tags``)."""

    action: BulkAction
    targets: targets.Targets
    spec_id: str = ""
    revision: int | None = None
    tags: tuple[str, ...] = ()


def check_tags(tags: tuple[str, ...]) -> list[str]:
    """``tags`` validated (InvalidArgument naming ``tags[i]``), 1 to ``MAX_TAGS_PER_CHANGE``."""
    if not 1 <= len(tags) <= targets.MAX_TAGS_PER_CHANGE:
        raise InvalidArgument(f"give 1 to {targets.MAX_TAGS_PER_CHANGE} tags", field="tags")
    return [validate_tag(tag, f"tags[{i}]") for i, tag in enumerate(tags)]


async def perform(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    request: BulkRequest,
    by: str,
    *,
    bus: EventBus | None = None,
    authenticator: agents.Authenticator | None = None,
) -> BulkOutcome:
    """Run ``request``: how many agents it addressed and how many changed."""
    where = request.targets
    limit = targets.MAX_BULK_AGENTS
    if request.action is BulkAction.RUN_SPEC:
        return await specs.request_runs(
            sessions, config, request.spec_id, where, by, request.revision
        )
    if request.action is BulkAction.CANCEL_RUNS:
        return await runs.cancel_runs_of(sessions, config, where, by, bus=bus)
    if request.action is BulkAction.REVOKE:
        return await agents.revoke_agents(sessions, config, where, authenticator)
    tags = check_tags(request.tags)
    adding = request.action is BulkAction.ADD_TAGS
    change = await targets.change_tags_of(
        sessions, config, where, tags if adding else [], [] if adding else tags, limit
    )
    return BulkOutcome(change.matched, change.changed)
