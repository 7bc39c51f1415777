"""HTML handlers of the fleet overview (``/``) and the agent page (``/agents/{id}``).

Thin: parse the request, call services, build view models, render. Run figures come from the
runs service (:mod:`server.services.runs`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server import app_keys
from server.domain import RunFilter, RunState
from server.services import action_notices
from server.services import actions as actions_service
from server.services import fleet as fleet_service
from server.services import inputs as inputs_service
from server.services import runs as runs_service
from server.services import specs as specs_service
from server.web.auth import actor_name
from server.web.fleet.views import (
    RequestNotice,
    agent_list_view,
    agent_page,
    overview_page,
    pending_action_note,
)
from server.web.refused import parse_dropping_refused, refused_status
from server.web.request import (
    MAX_TEXT,
    parse_agent_list,
    parse_chart_range,
    path_id,
    single,
)
from server.web.runs.styles import run_url
from server.web.runs.views import run_row
from server.web.sessions import web_sessions
from server.web.templates import render_page

AGENT_PAGE_RUNS = 10


async def overview(request: web.Request) -> web.StreamResponse:
    """``GET /``: agents online / stale / offline, config versions and rollout, runs waiting
    for input, events per time bucket over ``range`` (24h, 7d or 30d), and the agent list
    (search, health and version filters, sort, keyset pages). A bad list parameter or range
    shows the page again (400) with the error next to its field; the rest still applies."""
    app = request.app
    config = app[app_keys.CONFIG]
    now = datetime.now(UTC)
    sessions = web_sessions(app)
    query, refused = parse_dropping_refused(request.query, parse_agent_list)
    chart_range, range_refused = parse_dropping_refused(request.query, parse_chart_range)
    fleet = await fleet_service.fleet_overview(sessions, config, now)
    chart = await fleet_service.events_chart(sessions, chart_range, now)
    found = await fleet_service.list_agents(sessions, config, query, now)
    by_state = await runs_service.count_runs_by_state(sessions)
    latest = await runs_service.latest_runs(sessions, [a.record.id for a in found.agents])
    listed = agent_list_view(
        query,
        found,
        now,
        versions=fleet.config_versions,
        fleet_total=fleet.agents_total,
        latest_runs={agent_id: run_row(run, now) for agent_id, run in latest.items()},
        refused=refused,
        chart_range=chart_range,
    )
    if refused is not None and refused.field == "q":  # the text as it was typed
        listed = replace(listed, text=refused.typed[:MAX_TEXT])
    view = overview_page(
        fleet,
        listed,
        chart,
        list_query=query,
        waiting_runs=by_state.get(RunState.AWAITING_INPUT, 0),
        active_runs=by_state.get(RunState.RUNNING, 0) + by_state.get(RunState.PENDING, 0),
        spec_ids=tuple(s.spec_id for s in await specs_service.list_specs(sessions)),
        range_refused=range_refused,
    )
    response = await render_page("overview.html", request, {"page": view})
    return refused_status(response, refused or range_refused)


async def agent(request: web.Request) -> web.StreamResponse:
    """``GET /agents/{agent_id}``: facts, runs, recent events, "Run migration now"."""
    app = request.app
    agent_id = path_id(request, "agent_id")
    now = datetime.now(UTC)
    sessions = web_sessions(app)
    detail = await fleet_service.agent_detail(sessions, app[app_keys.CONFIG], agent_id, now)
    runs = await runs_service.list_runs(
        sessions, RunFilter(agent_id=agent_id, limit=AGENT_PAGE_RUNS)
    )
    pending = await actions_service.list_pending_actions(sessions, agent_id, now)
    requested = single(request.query, "requested", 64)
    notice = await _requested_notice(
        sessions, agent_id, requested, any(a.action_id == requested for a in pending)
    )
    run_states = await inputs_service.run_states_among(
        sessions, sorted({e.run_id for e in detail.events if e.run_id})
    )
    view = agent_page(
        detail,
        now,
        run_states=run_states,
        runs=[run_row(r, now) for r in runs.runs],
        pending=[pending_action_note(a, now) for a in pending if a.action_id != requested],
        notice=notice,
    )
    return await render_page("agent.html", request, {"page": view})


async def _requested_notice(
    sessions: async_sessionmaker[AsyncSession], agent_id: str, requested: str, waiting: bool
) -> RequestNotice | None:
    """What became of the run "Run migration now" asked for (``?requested=ACTION_ID``): its run
    as soon as the agent reported one, the agent's answer when there is none (up to date,
    refused), else still waiting for the agent (the page then refreshes itself)."""
    if not requested:
        return None
    run = await specs_service.run_for_action(sessions, requested)
    if run is not None:
        return RequestNotice("Run requested: the agent started it.", run_url(run.id), False)
    if waiting:
        return RequestNotice("Run requested: the agent starts it with its next check-in.", "", True)
    end = await action_notices.action_end(sessions, agent_id, requested)
    return RequestNotice(end.message, "", False) if end is not None else None


async def request_agent_run(request: web.Request) -> web.StreamResponse:
    """``POST /agents/{agent_id}/runs`` (the agent page's form): queue a "run migration now"
    action, delivered with the agent's next check-in, and go back to the agent page."""
    app = request.app
    agent_id = path_id(request, "agent_id")
    action = await runs_service.request_run(
        web_sessions(app), app[app_keys.CONFIG], agent_id, actor_name(request)
    )
    query = urlencode([("requested", action.action_id)])
    raise web.HTTPSeeOther(f"/agents/{agent_id}?{query}")
