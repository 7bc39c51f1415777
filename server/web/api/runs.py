"""The runs JSON API: runs, their logs, "cancel run" (``/api/v1/runs...``), and the JSON shapes
the other API modules share (runs, actions, timestamps).

Thin handlers: validate the query (a bad value raises ``InvalidArgument`` naming the parameter,
a 400 from ``server.web.middleware``), call a service, return JSON built from the domain
objects. POSTs require ``Content-Type: application/json`` (anything else is a 415), an admin
session and its CSRF token (``server.web.auth``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server import app_keys
from server.domain import (
    LogLineRecord,
    PendingAction,
    RunDetail,
    RunSummary,
)
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.web.auth import actor_name
from server.web.request import json_body, parse_log_query, parse_run_filter, path_id

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


async def list_runs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs``."""
    page = await runs_service.list_runs(
        request.app[app_keys.SESSIONS], parse_run_filter(request.query)
    )
    now = datetime.now(UTC)
    return web.json_response(
        {"runs": [run_json(r, now) for r in page.runs], "next_before": page.next_before}
    )


async def get_run(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}``."""
    detail = await runs_service.get_run(request.app[app_keys.SESSIONS], path_id(request, "run_id"))
    return web.json_response(run_detail_json(detail, datetime.now(UTC)))


async def run_logs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs``."""
    run_id = path_id(request, "run_id")
    page = await logs_service.query_logs(
        request.app[app_keys.SESSIONS], run_id, parse_log_query(request.query)
    )
    return web.json_response(
        {"lines": [log_line_json(x) for x in page.lines], "next_after_seq": page.next_after_seq}
    )


async def run_log_stats(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs/stats``."""
    stats = await logs_service.log_stats(request.app[app_keys.SESSIONS], path_id(request, "run_id"))
    return web.json_response(
        {"total": stats.total, "by_level": stats.by_level, "by_source": stats.by_source}
    )


async def run_log_sources(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/logs/sources``."""
    sources = await logs_service.log_sources(
        request.app[app_keys.SESSIONS], path_id(request, "run_id")
    )
    return web.json_response({"sources": sources})


async def cancel_run(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/runs/{run_id}/cancel``: 202 with the queued ``cancel_run`` action."""
    run_id = path_id(request, "run_id")
    await json_body(request)
    app = request.app
    action = await runs_service.request_cancel(
        app[app_keys.SESSIONS],
        app[app_keys.CONFIG],
        run_id,
        actor_name(request),
        bus=app.get(app_keys.BUS),
    )
    return web.json_response({"action": action_json(action)}, status=202)
