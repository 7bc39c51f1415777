"""THE route table of the web: every URL, its handler, and who may call it.

Read it top to bottom to go from a URL to its handler (columns: method, path, access,
handler, route name). Access levels (``server.web.auth``):
``PUBLIC`` anyone (only these rows make up the start-up allow-list, :data:`PUBLIC_ROUTES`),
``VIEWER`` any logged-in user, ``ADMIN`` a logged-in admin, ``METRICS`` a logged-in user or the
metrics bearer token. :func:`add_routes` registers every row and declares its access on the
handler, which is what the access middleware and the start-up check read. ``/static`` is added
by ``server.web.setup_web``.

Handlers are thin: they parse the request (``server.web.request``), call a service, build view
models, render. No SQL and no status-code decisions: bad input raises ``InvalidArgument``
(400 from ``server.web.middleware``), services raise ``Unavailable`` when the database is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from server.web import health, login
from server.web.api import agents as api_agents
from server.web.api import bulk as api_bulk
from server.web.api import document as api_document
from server.web.api import events as api_events
from server.web.api import export as api_export
from server.web.api import rollouts as api_rollouts
from server.web.api import runs as api_runs
from server.web.api import specs as api_specs
from server.web.api import webhooks as api_webhooks
from server.web.auth import Access, Handler, declare
from server.web.fleet import pages as fleet
from server.web.history import pages as history
from server.web.history import stream as history_stream
from server.web.migrations import pages as migrations
from server.web.rollouts import pages as rollouts
from server.web.runs import download as run_download
from server.web.runs import inputs as run_inputs
from server.web.runs import pages as runs
from server.web.runs import stream as run_stream
from server.web.webhooks import pages as webhooks

PUBLIC, VIEWER, ADMIN, METRICS = Access.PUBLIC, Access.VIEWER, Access.ADMIN, Access.METRICS


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the table (a ``GET`` also answers ``HEAD``)."""

    method: str
    path: str
    access: Access
    handler: Handler
    name: str


# fmt: off
ROUTES: Final[tuple[Route, ...]] = (
    # --- the fleet
    Route("GET",  "/",                                    VIEWER,  fleet.overview, "overview"),
    Route("GET",  "/agents/{agent_id}",                   VIEWER,  fleet.agent, "agent"),
    Route("POST", "/agents/{agent_id}/runs",              ADMIN,   fleet.request_agent_run, "agent_run"),
    # --- the History
    Route("GET",  "/history",                             VIEWER,  history.history, "history"),
    Route("GET",  "/history/stream",                      VIEWER,  history_stream.history_stream, "history_stream"),
    # --- runs
    Route("GET",  "/runs",                                VIEWER,  runs.runs, "runs"),
    Route("GET",  "/runs/rows",                           VIEWER,  runs.runs_rows, "runs_rows"),
    Route("GET",  "/runs/waiting",                        VIEWER,  runs.runs_waiting, "runs_waiting"),
    Route("GET",  "/runs/{run_id}",                       VIEWER,  runs.run_page, "run"),
    Route("GET",  "/runs/{run_id}/stream",                VIEWER,  run_stream.run_stream, "run_stream"),
    Route("GET",  "/runs/{run_id}/log.txt",               VIEWER,  run_download.log_text, "run_log_text"),
    Route("GET",  "/runs/{run_id}/log.jsonl",             VIEWER,  run_download.log_jsonl, "run_log_jsonl"),
    Route("POST", "/runs/{run_id}/cancel",                ADMIN,   runs.cancel_run, "run_cancel"),
    Route("POST", "/runs/{run_id}/inputs",                ADMIN,   run_inputs.submit_form, "run_inputs"),
    Route("POST", "/runs/{run_id}/revert",                ADMIN,   migrations.request_revert, "run_revert"),
    # --- migration specs
    Route("GET",  "/migrations",                          VIEWER,  migrations.migrations, "migrations"),
    Route("POST", "/migrations",                          ADMIN,   migrations.upload_spec, "migration_upload"),
    Route("GET",  "/migrations/{spec_id}",                VIEWER,  migrations.spec_detail, "migration"),
    Route("POST", "/migrations/{spec_id}/previews",       ADMIN,   migrations.request_preview, "migration_preview"),
    Route("GET",  "/migrations/{spec_id}/previews",       VIEWER,  migrations.previews, "migration_previews"),
    Route("POST", "/migrations/{spec_id}/runs",           ADMIN,   migrations.request_run, "migration_run"),
    Route("GET",  "/migrations/{spec_id}/runs/{action_id}", VIEWER, migrations.spec_run, "migration_run_wait"),
    # --- rollouts
    Route("GET",  "/rollouts",                            VIEWER,  rollouts.rollouts, "rollouts"),
    Route("POST", "/rollouts",                            ADMIN,   rollouts.create_rollout, "rollout_create"),
    Route("GET",  "/rollouts/new",                        ADMIN,   rollouts.new_rollout, "rollout_new"),
    Route("GET",  "/rollouts/{rollout_id}",               VIEWER,  rollouts.rollout, "rollout"),
    Route("POST", "/rollouts/{rollout_id}/pause",         ADMIN,   rollouts.pause, "rollout_pause"),
    Route("POST", "/rollouts/{rollout_id}/resume",        ADMIN,   rollouts.resume, "rollout_resume"),
    Route("POST", "/rollouts/{rollout_id}/abort",         ADMIN,   rollouts.abort, "rollout_abort"),
    # --- webhooks
    Route("GET",  "/webhooks",                            ADMIN,   webhooks.webhooks, "webhooks"),
    Route("POST", "/webhooks",                            ADMIN,   webhooks.add_webhook, "webhook_add"),
    Route("POST", "/webhooks/{webhook_id}/remove",        ADMIN,   webhooks.remove_webhook, "webhook_remove"),
    # --- the JSON API
    Route("GET",  "/api/v1/events",                       VIEWER,  api_events.api_events, "api_events"),
    Route("GET",  "/api/v1/events/export",                VIEWER,  api_export.export_events, "api_events_export"),
    Route("GET",  "/api/v1/runs",                         VIEWER,  api_runs.list_runs, "api_runs"),
    Route("GET",  "/api/v1/runs/export",                  VIEWER,  api_export.export_runs, "api_runs_export"),
    Route("GET",  "/api/v1/runs/{run_id}",                VIEWER,  api_runs.get_run, "api_run"),
    Route("GET",  "/api/v1/runs/{run_id}/logs",           VIEWER,  api_runs.run_logs, "api_run_logs"),
    Route("GET",  "/api/v1/runs/{run_id}/logs/stats",     VIEWER,  api_runs.run_log_stats, "api_log_stats"),
    Route("GET",  "/api/v1/runs/{run_id}/logs/sources",   VIEWER,  api_runs.run_log_sources, "api_log_sources"),
    Route("POST", "/api/v1/runs/{run_id}/cancel",         ADMIN,   api_runs.cancel_run, "api_cancel_run"),
    Route("GET",  "/api/v1/runs/{run_id}/inputs",         VIEWER,  run_inputs.get_inputs, "api_run_inputs"),
    Route("POST", "/api/v1/runs/{run_id}/inputs",         ADMIN,   run_inputs.submit_json, "api_submit_inputs"),
    Route("GET",  "/api/v1/agents",                       VIEWER,  api_agents.list_agents, "api_agents"),
    Route("GET",  "/api/v1/agents/select/count",          VIEWER,  api_agents.select_count, "api_select_count"),
    Route("POST", "/api/v1/agents/tags",                  ADMIN,   api_agents.change_tags, "api_agent_tags"),
    Route("POST", "/api/v1/agents/bulk",                  ADMIN,   api_bulk.bulk_action, "api_agents_bulk"),
    Route("GET",  "/api/v1/agents/{agent_id}",            VIEWER,  api_agents.get_agent, "api_agent"),
    Route("POST", "/api/v1/agents/{agent_id}/runs",       ADMIN,   api_agents.request_agent_run, "api_request_run"),
    Route("GET",  "/api/v1/migrations",                   VIEWER,  api_specs.list_specs, "api_migrations"),
    Route("POST", "/api/v1/migrations",                   ADMIN,   api_specs.add_spec, "api_add_migration"),
    Route("GET",  "/api/v1/migrations/{spec_id}",         VIEWER,  api_specs.get_spec, "api_migration"),
    Route("GET",  "/api/v1/migrations/{spec_id}/revisions/{revision}", VIEWER, api_specs.get_revision, "api_migration_revision"),
    Route("GET",  "/api/v1/migrations/{spec_id}/diff",    VIEWER,  api_specs.diff_revisions, "api_migration_diff"),
    Route("POST", "/api/v1/migrations/{spec_id}/preview", ADMIN,   api_specs.request_preview, "api_migration_preview"),
    Route("POST", "/api/v1/migrations/{spec_id}/run",     ADMIN,   api_specs.request_run, "api_migration_run"),
    Route("GET",  "/api/v1/previews/{action_id}",         VIEWER,  api_specs.get_preview, "api_preview"),
    Route("POST", "/api/v1/runs/{run_id}/revert",         ADMIN,   api_specs.request_revert, "api_revert_run"),
    Route("GET",  "/api/v1/rollouts",                     VIEWER,  api_rollouts.list_rollouts, "api_rollouts"),
    Route("POST", "/api/v1/rollouts",                     ADMIN,   api_rollouts.create_rollout, "api_create_rollout"),
    Route("GET",  "/api/v1/rollouts/{rollout_id}",        VIEWER,  api_rollouts.get_rollout, "api_rollout"),
    Route("POST", "/api/v1/rollouts/{rollout_id}/pause",  ADMIN,   api_rollouts.pause, "api_pause_rollout"),
    Route("POST", "/api/v1/rollouts/{rollout_id}/resume", ADMIN,   api_rollouts.resume, "api_resume_rollout"),
    Route("POST", "/api/v1/rollouts/{rollout_id}/abort",  ADMIN,   api_rollouts.abort, "api_abort_rollout"),
    Route("GET",  "/api/v1/webhooks",                     ADMIN,   api_webhooks.list_webhooks, "api_webhooks"),
    Route("POST", "/api/v1/webhooks",                     ADMIN,   api_webhooks.add_webhook, "api_add_webhook"),
    Route("DELETE", "/api/v1/webhooks/{webhook_id}",      ADMIN,   api_webhooks.remove_webhook, "api_remove_webhook"),
    Route("GET",  "/api/v1/webhooks/{webhook_id}/deliveries", ADMIN, api_webhooks.deliveries, "api_webhook_deliveries"),
    Route("GET",  "/api/v1/openapi.json",                 VIEWER,  api_document.openapi, "api_openapi"),
    # --- sessions
    Route("GET",  "/login",                               PUBLIC,  login.login_page, "login"),
    Route("POST", "/login",                               PUBLIC,  login.login_submit, "login_submit"),
    Route("POST", "/logout",                              VIEWER,  login.logout, "logout"),
    # --- operations
    Route("GET",  "/healthz",                             PUBLIC,  health.healthz, "healthz"),
    Route("GET",  "/metrics",                             METRICS, health.metrics, "metrics"),
)
# fmt: on


def _methods(route: Route) -> tuple[str, ...]:
    return ("GET", "HEAD") if route.method == "GET" else (route.method,)


PUBLIC_ROUTES: Final[frozenset[tuple[str, str]]] = frozenset(
    (method, route.path) for route in ROUTES if route.access is PUBLIC for method in _methods(route)
)
"""The start-up allow-list: the ONLY (method, path) pairs reachable without logging in."""


def add_routes(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    """Register every row of ``routes`` on ``app``, declaring its access on its handler."""
    for route in routes:
        declare(route.handler, route.access)
        if route.method == "GET":
            app.router.add_get(route.path, route.handler, name=route.name)
        else:
            app.router.add_route(route.method, route.path, route.handler, name=route.name)
