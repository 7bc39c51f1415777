"""The JSON API of runs, logs and agents (``/api/v1/...``), and its OpenAPI document.

Thin handlers: validate the query (a bad value raises ``InvalidArgument`` naming the parameter,
a 400 from ``server.web.middleware``), call a service, return JSON built from the domain
objects. The two POSTs require ``Content-Type: application/json`` (anything else is a 415), so
a cross-site HTML form cannot trigger them; web login and CSRF tokens come with issue 5 — until
then these POSTs are open to whoever can reach the web port (127.0.0.1 by default).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from server import app_keys
from server.domain import (
    AgentSummary,
    LogLineRecord,
    LogQuery,
    PendingAction,
    RunDetail,
    RunFilter,
    RunState,
    RunSummary,
)
from server.errors import InvalidArgument
from server.services import actions as actions_service
from server.services import agents as agents_service
from server.services import fleet as fleet_service
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.web.auth import actor_name, admin, viewer
from server.web.log_params import parse_int, parse_log_filter, single
from server.web.openapi import openapi_document

DEFAULT_RUNS_LIMIT = 50
DEFAULT_LOGS_LIMIT = 500
MAX_ID = 64
MAX_BODY = 16 * 1024


def iso(value: datetime | None) -> str | None:
    """A timestamp as ISO 8601 in UTC (None stays None): every time in the JSON API."""
    return None if value is None else value.astimezone(UTC).isoformat()


def run_json(run: RunSummary, now: datetime) -> dict[str, Any]:
    """A run as the API returns it."""
    return {
        "id": run.id,
        "agent_id": run.agent_id,
        "hostname": run.hostname,
        "migration_id": run.migration_id,
        "state": run.state.value,
        "terminal": run.terminal,
        "steps_done": run.steps_done,
        "steps_total": run.steps_total,
        "migration_from": run.migration_from,
        "migration_to": run.migration_to,
        "error_message": run.error_message,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": run.duration_seconds(now),
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "requested_by": run.requested_by,
        "requested_action_id": run.requested_action_id,
        "cancel_requested_by": run.cancel_requested_by,
        "cancel_requested_at": iso(run.cancel_requested_at),
        "cancelled_by": run.cancelled_by,
    }


def run_detail_json(detail: RunDetail, now: datetime) -> dict[str, Any]:
    """One run with its steps, progress and ETA."""
    body = run_json(detail.run, now)
    body.update(
        steps=[
            {
                "index": s.index,
                "name": s.name,
                "status": s.status,
                "error": s.error,
                "duration_ms": s.duration_ms,
            }
            for s in detail.steps
        ],
        progress=detail.progress,
        eta_seconds=detail.eta_seconds,
        eta_basis=detail.eta_basis or None,
        log_lines=detail.log_lines,
        cancel_pending=detail.cancel_pending,
    )
    return body


def log_line_json(line: LogLineRecord) -> dict[str, Any]:
    """One log line."""
    return {
        "seq": line.seq,
        "timestamp": iso(line.timestamp),
        "level": line.level,
        "source": line.source,
        "message": line.message,
        "metadata": line.metadata,
    }


def action_json(action: PendingAction) -> dict[str, Any]:
    """A queued action."""
    return {
        "action_id": action.action_id,
        "agent_id": action.agent_id,
        "kind": action.kind.value,
        "params": action.params,
        "created_at": iso(action.created_at),
        "expires_at": iso(action.expires_at),
        "delivered_at": iso(action.delivered_at),
        "acknowledged_at": iso(action.acknowledged_at),
        "requested_by": action.requested_by,
    }


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


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID or not value.isprintable():
        raise InvalidArgument("is not a valid id", field=name)
    return value


def _states(query: MultiMapping[str]) -> tuple[RunState, ...]:
    states: dict[RunState, None] = {}
    for raw in query.getall("state", []):
        value = raw.strip().upper()
        if not value:
            continue
        try:
            states[RunState(value)] = None
        except ValueError:
            names = ", ".join(s.value for s in RunState)
            raise InvalidArgument(f"must be one of {names}", field="state") from None
    return tuple(states)


def parse_run_filter(query: MultiMapping[str]) -> RunFilter:
    """``state`` (repeatable), ``agent``, ``before`` (cursor), ``limit`` (1-500)."""
    agent = single(query, "agent", MAX_ID)
    before = single(query, "before", 80)
    limit = single(query, "limit", 8)
    return RunFilter(
        states=_states(query),
        agent_id=agent or None,
        before=before or None,
        limit=parse_int("limit", limit, 1, runs_service.MAX_LIST_LIMIT)
        if limit
        else DEFAULT_RUNS_LIMIT,
    )


def parse_log_query(query: MultiMapping[str]) -> LogQuery:
    """``level``*, ``source``*, ``q``, ``after_seq``, ``limit`` (1-5000) (* repeatable)."""
    f = parse_log_filter(query)
    after = single(query, "after_seq", 20)
    limit = single(query, "limit", 8)
    return LogQuery(
        levels=f.levels,
        sources=f.sources,
        text=f.text or None,
        after_seq=parse_int("after_seq", after, 0, 2**62) if after else 0,
        limit=parse_int("limit", limit, 1, logs_service.MAX_LIMIT) if limit else DEFAULT_LOGS_LIMIT,
    )


async def json_body(
    request: web.Request, max_bytes: int = MAX_BODY, *, allow_empty: bool = True
) -> dict[str, Any]:
    """A POST's JSON object body: Content-Type must be application/json (415 otherwise), at
    most ``max_bytes`` (400 naming the limit); an empty body is ``{}`` when ``allow_empty``."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="Content-Type must be application/json")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise InvalidArgument(f"must be at most {max_bytes} bytes", field="body")
    if allow_empty and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise InvalidArgument("must be a JSON object", field="body")
    return body


@viewer
async def list_runs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs``."""
    page = await runs_service.list_runs(
        request.app[app_keys.SESSIONS], parse_run_filter(request.query)
    )
    now = datetime.now(UTC)
    return web.json_response(
        {"runs": [run_json(r, now) for r in page.runs], "next_before": page.next_before}
    )


@viewer
async def get_run(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}``."""
    detail = await runs_service.get_run(request.app[app_keys.SESSIONS], _path_id(request, "run_id"))
    return web.json_response(run_detail_json(detail, datetime.now(UTC)))


@viewer
async def run_logs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs``."""
    run_id = _path_id(request, "run_id")
    page = await logs_service.query_logs(
        request.app[app_keys.SESSIONS], run_id, parse_log_query(request.query)
    )
    return web.json_response(
        {"lines": [log_line_json(x) for x in page.lines], "next_after_seq": page.next_after_seq}
    )


@viewer
async def run_log_stats(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs/stats``."""
    stats = await logs_service.log_stats(
        request.app[app_keys.SESSIONS], _path_id(request, "run_id")
    )
    return web.json_response(
        {"total": stats.total, "by_level": stats.by_level, "by_source": stats.by_source}
    )


@viewer
async def run_log_sources(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs/sources``."""
    sources = await logs_service.log_sources(
        request.app[app_keys.SESSIONS], _path_id(request, "run_id")
    )
    return web.json_response({"sources": sources})


@admin
async def cancel_run(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/runs/{run_id}/cancel``: 202 with the queued ``cancel_run`` action."""
    run_id = _path_id(request, "run_id")
    await json_body(request)
    app = request.app
    action = await runs_service.request_cancel(
        app[app_keys.SESSIONS], app[app_keys.CONFIG], run_id, actor_name(request)
    )
    bus = app.get(app_keys.BUS)
    if bus is not None:  # the run's page shows "cancel requested" at once
        bus.publish_runs([action.params.get("run_id", run_id)])
    return web.json_response({"action": action_json(action)}, status=202)


@admin
async def request_agent_run(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/agents/{agent_id}/runs``: 202 with the queued ``run_migration`` action."""
    agent_id = _path_id(request, "agent_id")
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


@viewer
async def list_agents(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/agents``: every agent with its derived health, by hostname."""
    app = request.app
    agents = await agents_service.list_agents(app[app_keys.SESSIONS], app[app_keys.CONFIG])
    return web.json_response({"agents": [agent_json(a) for a in agents]})


@viewer
async def get_agent(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/agents/{agent_id}``: facts, health, recent runs, pending actions."""
    app = request.app
    sessions = app[app_keys.SESSIONS]
    agent_id = _path_id(request, "agent_id")
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


@viewer
async def openapi(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of the whole ``/api/v1``."""
    return web.json_response(openapi_document())


def add_api_routes(app: web.Application) -> None:
    """Register the runs / logs / agents JSON API and the OpenAPI document on ``app``."""
    app.router.add_get("/api/v1/runs", list_runs, name="api_runs")
    app.router.add_get("/api/v1/runs/{run_id}", get_run, name="api_run")
    app.router.add_get("/api/v1/runs/{run_id}/logs", run_logs, name="api_run_logs")
    app.router.add_get("/api/v1/runs/{run_id}/logs/stats", run_log_stats, name="api_log_stats")
    app.router.add_get(
        "/api/v1/runs/{run_id}/logs/sources", run_log_sources, name="api_log_sources"
    )
    app.router.add_post("/api/v1/runs/{run_id}/cancel", cancel_run, name="api_cancel_run")
    app.router.add_post("/api/v1/agents/{agent_id}/runs", request_agent_run, name="api_request_run")
    app.router.add_get("/api/v1/agents", list_agents, name="api_agents")
    app.router.add_get("/api/v1/agents/{agent_id}", get_agent, name="api_agent")
    app.router.add_get("/api/v1/openapi.json", openapi, name="api_openapi")
