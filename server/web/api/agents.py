"""The agents JSON API: ``/api/v1/agents``, one agent, "run migration now"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server import app_keys
from server.domain import RunFilter
from server.errors import InvalidArgument
from server.services import actions as actions_service
from server.services import agents as agents_service
from server.services import fleet as fleet_service
from server.services import runs as runs_service
from server.services import targets as targets_service
from server.web.api.shapes import (
    AgentList,
    TagChangeResult,
    accepted_json,
    action_json,
    agent_detail_json,
    agent_json,
    run_json,
    select_count_json,
)
from server.web.auth import actor_name
from server.web.request import json_body, parse_select, parse_select_count, path_id
from server.web.sessions import web_sessions

MAX_TAGS_BODY = 4 * 1024 * 1024  # room for 100,000 agent ids


async def request_agent_run(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/agents/{agent_id}/runs``: 202 with the queued ``run_migration`` action."""
    agent_id = path_id(request, "agent_id")
    body = await json_body(request)
    migration_id = body.get("migration_id")
    if migration_id is not None and not isinstance(migration_id, str):
        raise InvalidArgument("must be a string", field="migration_id")
    app = request.app
    action = await runs_service.request_run(
        web_sessions(app),
        app[app_keys.CONFIG],
        agent_id,
        actor_name(request),
        migration_id or None,
    )
    return web.json_response(accepted_json(action), status=202)


async def list_agents(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/agents``: every agent with its derived health, by hostname; only those
    the ``select`` expressions pick when given."""
    app = request.app
    expressions = parse_select(request.query)
    agents = await agents_service.list_agents(
        web_sessions(app), app[app_keys.CONFIG], expressions or None
    )
    return web.json_response(AgentList(agents=[agent_json(a) for a in agents]))


async def select_count(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/agents/select/count``: how many agents the ``select`` expressions pick,
    and the first ``limit`` (the live count of the selector input)."""
    app = request.app
    expressions, limit = parse_select_count(request.query)
    selection = await targets_service.select_agents(
        web_sessions(app), app[app_keys.CONFIG], expressions, limit
    )
    return web.json_response(select_count_json(selection))


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidArgument("must be a list of strings", field=name)
    return value


async def change_tags(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/agents/tags``: add and remove tags on the agents ``select`` picks or
    ``agent_ids`` lists; how many were picked and how many changed."""
    app = request.app
    body = await json_body(request, MAX_TAGS_BODY, allow_empty=False)
    unknown = sorted(set(body) - {"add", "remove", "select", "agent_ids"})
    if unknown:
        raise InvalidArgument("unknown field", field=unknown[0])
    change = await targets_service.change_tags(
        web_sessions(app),
        app[app_keys.CONFIG],
        add=_strings(body, "add") or (),
        remove=_strings(body, "remove") or (),
        expressions=_strings(body, "select"),
        agent_ids=_strings(body, "agent_ids"),
    )
    return web.json_response(TagChangeResult(matched=change.matched, changed=change.changed))


async def get_agent(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/agents/{agent_id}``: facts, health, recent runs, pending actions."""
    app = request.app
    sessions = web_sessions(app)
    agent_id = path_id(request, "agent_id")
    now = datetime.now(UTC)
    detail = await fleet_service.agent_detail(sessions, app[app_keys.CONFIG], agent_id, now)
    record = detail.agent.record
    runs = await runs_service.list_runs(sessions, RunFilter(agent_id=record.id, limit=20))
    actions = await actions_service.list_pending_actions(sessions, record.id, now)
    return web.json_response(
        agent_detail_json(
            detail.agent, [run_json(r, now) for r in runs.runs], [action_json(a) for a in actions]
        )
    )
