"""``POST /api/v1/agents/bulk``: one action on many agents (``server.services.bulk``)."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from server import app_keys
from server.domain import BulkAction
from server.errors import InvalidArgument
from server.services import bulk as bulk_service
from server.services import targets as targets_service
from server.web.api.shapes import BulkActionResult
from server.web.auth import actor_name
from server.web.request import json_body
from server.web.sessions import web_sessions

MAX_BULK_BODY = 2 * 1024 * 1024  # room for 10,000 agent ids
MAX_REVISION = 2**31 - 1
_COMMON: Final = frozenset({"action", "select", "agent_ids"})
_ARGUMENTS: Final[dict[BulkAction, frozenset[str]]] = {
    BulkAction.RUN_SPEC: frozenset({"spec_id", "revision"}),
    BulkAction.CANCEL_RUNS: frozenset(),
    BulkAction.ADD_TAGS: frozenset({"tags"}),
    BulkAction.REMOVE_TAGS: frozenset({"tags"}),
    BulkAction.REVOKE: frozenset(),
}


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidArgument("must be a list of strings", field=name)
    return value


def _action(body: dict[str, Any]) -> BulkAction:
    value = body.get("action")
    try:
        return BulkAction(value) if isinstance(value, str) else BulkAction("")
    except ValueError:
        choices = ", ".join(kind.value for kind in BulkAction)
        raise InvalidArgument(f"must be one of {choices}", field="action") from None


def _revision(body: dict[str, Any]) -> int | None:
    value = body.get("revision")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_REVISION:
        raise InvalidArgument("must be a positive integer", field="revision")
    return value


def parse_bulk(body: dict[str, Any]) -> bulk_service.BulkRequest:
    """The bulk request of a JSON body; InvalidArgument naming the first bad field (unknown,
    not taken by the action, missing or of the wrong type)."""
    action = _action(body)
    allowed = _COMMON | _ARGUMENTS[action]
    unknown = sorted(set(body) - allowed)
    if unknown:
        why = (
            "unknown field"
            if unknown[0] not in _COMMON.union(*_ARGUMENTS.values())
            else (f"is not taken by {action.value}")
        )
        raise InvalidArgument(why, field=unknown[0])
    where = targets_service.targets_of(
        _strings(body, "select"), _strings(body, "agent_ids"), targets_service.MAX_BULK_AGENTS
    )
    spec_id = body.get("spec_id", "")
    if action is BulkAction.RUN_SPEC and (not isinstance(spec_id, str) or not spec_id):
        raise InvalidArgument("is required (a migration spec id)", field="spec_id")
    tags = _strings(body, "tags")
    if action in (BulkAction.ADD_TAGS, BulkAction.REMOVE_TAGS) and not tags:
        raise InvalidArgument("is required (a list of tags)", field="tags")
    return bulk_service.BulkRequest(
        action, where, spec_id=spec_id, revision=_revision(body), tags=tuple(tags or ())
    )


async def bulk_action(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/agents/bulk``: how many agents were picked and how many changed."""
    app = request.app
    body = await json_body(request, MAX_BULK_BODY, allow_empty=False)
    services = app.get(app_keys.SERVICES)
    outcome = await bulk_service.perform(
        web_sessions(app),
        app[app_keys.CONFIG],
        parse_bulk(body),
        actor_name(request),
        bus=app.get(app_keys.BUS),
        authenticator=services.authenticator if services is not None else None,
    )
    return web.json_response(BulkActionResult(matched=outcome.matched, changed=outcome.changed))
