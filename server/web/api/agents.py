"""The agents JSON API: ``/api/v1/agents``, one agent, "run migration now"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server import app_keys
from server.domain import AgentSummary, RunFilter
from server.errors import InvalidArgument
from server.services import actions as actions_service
from server.services import agents as agents_service
from server.services import fleet as fleet_service
from server.services import runs as runs_service
from server.web.api.runs import action_json, iso, run_json
from server.web.auth import actor_name
from server.web.request import json_body, path_id


def agent_json(agent: AgentSummary) -> dict[str, Any]:
    """An agent of the list."""
    return {
        "id": agent.id,
        "hostname": agent.hostname,
        "os": agent.os,
        "agent_version": agent.agent_version,
        "config_version": agent.config_version,
        "enrolled_at": iso(agent.enrolled_at),
        "last_checkin_at": iso(agent.last_checkin_at),
        "revoked": agent.revoked,
        "health": agent.health.value,
    }


async def request_agent_run(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/agents/{agent_id}/runs``: 202 with the queued ``run_migration`` action."""
    agent_id = path_id(request, "agent_id")
    body = await json_body(request)
    migration_id = body.get("migration_id")
    if migration_id is not None and not isinstance(migration_id, str):
        raise InvalidArgument("must be a string", field="migration_id")
    app = request.app
    action = await runs_service.request_run(
        app[app_keys.SESSIONS],
        app[app_keys.CONFIG],
        agent_id,
        actor_name(request),
        migration_id or None,
    )
    return web.json_response({"action": action_json(action)}, status=202)


async def list_agents(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/agents``: every agent with its derived health, by hostname."""
    app = request.app
    agents = await agents_service.list_agents(app[app_keys.SESSIONS], app[app_keys.CONFIG])
    return web.json_response({"agents": [agent_json(a) for a in agents]})


async def get_agent(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/agents/{agent_id}``: facts, health, recent runs, pending actions."""
    app = request.app
    sessions = app[app_keys.SESSIONS]
    agent_id = path_id(request, "agent_id")
    now = datetime.now(UTC)
    detail = await fleet_service.agent_detail(sessions, app[app_keys.CONFIG], agent_id, now)
    record = detail.agent.record
    runs = await runs_service.list_runs(sessions, RunFilter(agent_id=record.id, limit=20))
    actions = await actions_service.list_pending_actions(sessions, record.id, now)
    return web.json_response(
        {
            "id": record.id,
            "hostname": record.hostname,
            "os": record.os,
            "kernel": record.kernel,
            "agent_version": record.agent_version,
            "config_version": record.config_version,
            "disk_free_bytes": record.disk_free_bytes,
            "machine_id": record.machine_id,
            "enrolled_at": iso(record.enrolled_at),
            "last_checkin_at": iso(record.last_checkin_at),
            "checkin_interval_seconds": record.checkin_interval_seconds,
            "revoked": record.revoked,
            "health": detail.agent.health.value,
            "runs": [run_json(r, now) for r in runs.runs],
            "pending_actions": [action_json(a) for a in actions],
        }
    )
