"""HTML handlers of the runs pages: ``/runs`` (+ its "Load more" fragment), ``/runs/{id}``, and
the form POST "Cancel run".

Thin: parse and validate the query (a bad value is an InvalidArgument naming it -> 400; the
pages show themselves with it, ``server.web.refused``), call the runs / logs / history services,
build view models, render. The POSTs are plain same-origin form posts (work without JavaScript)
that call the same services as the JSON API and redirect back (303); they need an admin session
and its CSRF token (``server.web.auth``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiMapping

from server import app_keys
from server.domain import LogQuery, RunState
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.services import specs as specs_service
from server.web.auth import actor_name
from server.web.forms import Option, agent_chooser
from server.web.refused import RefusedParam, parse_dropping_refused, refused_status
from server.web.request import (
    RUNS_PAGE_SIZE,
    LogFilter,
    parse_int,
    parse_log_filter,
    parse_run_filter,
    path_id,
    run_export_url,
    run_filter_params,
    single,
    with_query,
)
from server.web.runs.styles import LOG_LEVELS, run_url, state_style
from server.web.runs.views import (
    RUNS_TEMPLATE,
    LogFilterForm,
    RunDetailView,
    RunsPage,
    log_line_row,
    run_detail_view,
    run_row,
)
from server.web.runs.views import RunPage as RunPageView
from server.web.sessions import web_sessions
from server.web.templates import render_page, template_macro

LOG_PAGE_LINES = 1000
MAX_SEQ = 2**63 - 1


# --------------------------------------------------------------------------- /runs


async def runs(request: web.Request) -> web.StreamResponse:
    """``GET /runs``: recent runs, newest first; state and agent filters; keyset pages. A bad
    filter value shows the page (400) with the others applied, the error next to its field."""
    f, refused = parse_dropping_refused(request.query, parse_run_filter)
    page = await runs_service.list_runs(web_sessions(request.app), f)
    now = datetime.now(UTC)
    agents = await history_service.list_agent_choices(web_sessions(request.app))
    chosen = set(f.states)
    view = RunsPage(
        runs=tuple(run_row(r, now) for r in page.runs),
        states=tuple(Option(s.value, state_style(s).label, s in chosen) for s in RunState),
        agent=agent_chooser(agents, f.agent_id),
        filtered=bool(f.states or f.agent_id),
        paged=f.before is not None,
        newest_url=with_query("/runs", run_filter_params(f)),
        more_url=with_query("/runs", run_filter_params(f, page.next_before))
        if page.next_before
        else None,
        more_fragment_url=with_query("/runs/rows", run_filter_params(f, page.next_before))
        if page.next_before
        else None,
        limit=f.limit if f.limit != RUNS_PAGE_SIZE else None,
        live_url=with_query("/runs/rows", run_filter_params(f)) if f.before is None else None,
        export_csv_url=run_export_url(f, "csv"),
        export_jsonl_url=run_export_url(f, "jsonl"),
        refused=refused,
    )
    return refused_status(await render_page("runs.html", request, {"page": view}), refused)


async def runs_rows(request: web.Request) -> web.StreamResponse:
    """``GET /runs/rows``: the next page of ``/runs`` as rendered rows, for "Load more":
    ``{"html": "<tr>…", "more_url": …, "more_fragment_url": …}``."""
    f = parse_run_filter(request.query)
    page = await runs_service.list_runs(web_sessions(request.app), f)
    now = datetime.now(UTC)
    macro = template_macro(request.app, "run_row", RUNS_TEMPLATE)
    html = "\n".join(str(macro(run_row(r, now), True)) for r in page.runs)
    more = page.next_before
    return web.json_response(
        {
            "html": html,
            "count": len(page.runs),
            "more_url": with_query("/runs", run_filter_params(f, more)) if more else None,
            "more_fragment_url": with_query("/runs/rows", run_filter_params(f, more))
            if more
            else None,
        }
    )


async def runs_waiting(request: web.Request) -> web.StreamResponse:
    """``GET /runs/waiting``: ``{"count": n}``, the runs waiting for input (the header's live
    "N waiting for input", polled by ``web/static/waiting.js``)."""
    count = await inputs_service.count_awaiting(web_sessions(request.app))
    return web.json_response({"count": count}, headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------- /runs/{id}


async def run_status(app: web.Application, run_id: str) -> RunDetailView:
    """The run's status block (state, progress, ETA, steps, log counts), for the run page and
    its stream. Raises NotFound."""
    sessions = web_sessions(app)
    now = datetime.now(UTC)
    detail = await runs_service.get_run(sessions, run_id, now)
    stats = await logs_service.log_stats(sessions, run_id)
    return run_detail_view(detail, stats, now)


async def run_page(request: web.Request) -> web.StreamResponse:
    """``GET /runs/{run_id}``: state, progress, ETA, steps, log viewer (level / source / text
    filters, counts), live tail and cancel. ``from_seq`` pages back through a long log;
    without it the page shows the newest ``LOG_PAGE_LINES`` lines. A bad filter value shows
    the page (400) with the others applied, the error next to its field."""
    app = request.app
    sessions = web_sessions(app)
    run_id = path_id(request, "run_id")
    (log_filter, from_seq), refused = parse_dropping_refused(request.query, _log_view)
    status = await run_status(app, run_id)  # NotFound -> 404
    sources = await logs_service.log_sources(sessions, run_id)
    total = status.stats.total
    start = from_seq if from_seq is not None else max(0, total - LOG_PAGE_LINES)
    page = await logs_service.query_logs(
        sessions,
        run_id,
        LogQuery(
            levels=log_filter.levels,
            sources=log_filter.sources,
            text=log_filter.text or None,
            after_seq=start,
            limit=LOG_PAGE_LINES,
        ),
    )
    lines = tuple(log_line_row(r) for r in page.lines)
    # The stream starts after the last line shown: it re-reads (and filters) anything above,
    # so nothing is skipped and nothing shown twice.
    cursor = lines[-1].seq if lines else start
    earlier = (
        log_filter.url(status.row.url, [("from_seq", str(max(0, start - LOG_PAGE_LINES)))])
        if start > 0
        else None
    )
    notice = {
        "requested": "Cancellation requested: the agent stops at the next step boundary and "
        "rolls back.",
    }.get(request.query.get("cancel", ""), "")
    notice_until = "terminal" if notice and not status.terminal else ""
    if notice and status.terminal:
        notice = ""  # the outcome is here: the status block says how it ended
    revert_run_url = ""
    if request.query.get("revert") == "requested":
        notice_until = ""
        notice = (
            "Revert requested: the agent puts the files back from the run's backup with its "
            "next check-in, and reports the revert as a run of its own."
        )
        revert_action = single(request.query, "revert_action", 64)
        reverting = (
            await specs_service.run_for_action(sessions, revert_action) if revert_action else None
        )
        if reverting is not None:
            revert_run_url = run_url(reverting.id)
    if request.query.get("inputs") == "sent":
        answered = status.input_prompt is not None and status.input_prompt.answered
        notice = (
            "Answers sent, waiting for the agent (delivered with its next check-in)."
            if answered
            else ""
        )
        notice_until = "answered" if answered else ""
    reverted = await specs_service.reverted_by(sessions, run_id) if status.revertible else None
    view = RunPageView(
        run=status,
        stats=status.stats,
        lines=lines,
        filters=_log_filter_form(log_filter, sources, refused),
        earlier_url=earlier,
        stream_url=log_filter.url(f"{status.row.url}/stream"),
        log_cursor=cursor,
        cancel_action=f"{status.row.url}/cancel",
        notice=notice,
        notice_until=notice_until,
        revert_action=f"{status.row.url}/revert" if status.revertible and not reverted else "",
        revert_run_url=revert_run_url,
        reverted_by_url=run_url(reverted.id) if reverted is not None else "",
    )
    return refused_status(await render_page("run.html", request, {"page": view}), refused)


def _log_view(query: MultiMapping[str]) -> tuple[LogFilter, int | None]:
    """The run page's log filter and ``from_seq`` (None: the newest lines)."""
    log_filter = parse_log_filter(query)
    from_raw = single(query, "from_seq", 20)
    return log_filter, parse_int("from_seq", from_raw, 0, MAX_SEQ) if from_raw else None


def _log_filter_form(
    f: LogFilter, sources: list[str], refused: RefusedParam | None
) -> LogFilterForm:
    chosen = set(f.sources)
    options = [Option(s, s, s in chosen) for s in sources]
    options.extend(Option(s, s, True) for s in f.sources if s not in set(sources))
    return LogFilterForm(
        levels=tuple(Option(level, level.capitalize(), level in f.levels) for level in LOG_LEVELS),
        sources=tuple(options),
        q=f.text,
        active=f.active,
        refused=refused,
    )


async def cancel_run(request: web.Request) -> web.StreamResponse:
    """``POST /runs/{run_id}/cancel`` (the page's form): queue a cancel for the agent, wake the
    run's live streams, and go back to the run page. 409 when the run already ended."""
    app = request.app
    run_id = path_id(request, "run_id")
    await runs_service.request_cancel(
        web_sessions(app),
        app[app_keys.CONFIG],
        run_id,
        actor_name(request),
        bus=app.get(app_keys.BUS),
    )
    raise web.HTTPSeeOther(f"{run_url(run_id)}?cancel=requested")
