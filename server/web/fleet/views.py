"""View models of the fleet overview (``/``) and the agent page (``/agents/{id}``).

Built from service results; templates never see ORM rows. Agent-supplied strings stay plain
``str`` and are autoescaped by the templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from server.domain import (
    UNREPORTED_VERSION,
    ActionKind,
    AgentHealth,
    AgentListQuery,
    AgentSort,
    AgentState,
    ChartRange,
    PendingAction,
    version_key,
)
from server.services.fleet import AgentDetail, AgentList, EventsChart, FleetAgent, FleetOverview
from server.web.fleet.charts import StackedBarChart, events_chart, span_words
from server.web.format import display_time, human_bytes, relative_time
from server.web.forms import Option
from server.web.history.views import DetailItem, EventRow, event_row
from server.web.refused import RefusedParam
from server.web.request import agent_list_params, with_query
from server.web.runs.views import RunRow


@dataclass(frozen=True, slots=True)
class HealthStyle:
    key: str
    label: str


HEALTH_STYLES: dict[str, HealthStyle] = {
    AgentHealth.ONLINE: HealthStyle("online", "Online"),
    AgentHealth.STALE: HealthStyle("stale", "Stale"),
    AgentHealth.OFFLINE: HealthStyle("offline", "Offline"),
    AgentHealth.NEVER: HealthStyle("never", "Never checked in"),
    "revoked": HealthStyle("offline", "Revoked"),
}


def health_style(health: str, revoked: bool = False) -> HealthStyle:
    """How an agent's health looks (a revoked agent shows as revoked, whatever its check-ins)."""
    if revoked:
        return HEALTH_STYLES["revoked"]
    return HEALTH_STYLES.get(health, HealthStyle(health, health.capitalize()))


def agent_url(agent_id: str) -> str:
    """``/agents/{id}`` with the id percent-encoded."""
    return f"/agents/{quote(agent_id, safe='')}"


@dataclass(frozen=True, slots=True)
class HealthCard:
    key: str
    label: str
    count: int
    note: str
    url: str  # the agent list filtered by this health
    current: bool = False  # the list is filtered by this health


@dataclass(frozen=True, slots=True)
class VersionShare:
    version: str
    count: int
    percent: int
    is_target: bool
    url: str = ""  # the agent list filtered by this version


@dataclass(frozen=True, slots=True)
class AgentListRow:
    id: str
    url: str
    hostname: str
    health: HealthStyle
    config_version: str
    agent_version: str
    last_checkin_iso: str
    last_checkin_display: str
    last_checkin_relative: str
    latest_run: RunRow | None
    labels: tuple[str, ...] = ()  # "key=value", by key
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SortHeader:
    """A column head of the agent list: ``url`` sorts by it (the other direction when it is
    the current sort); ``aria_sort`` is "ascending", "descending" or "none"."""

    label: str
    url: str | None  # None: the column does not sort
    aria_sort: str


@dataclass(frozen=True, slots=True)
class AgentListView:
    """The agent list: one keyset page of rows, its filter form and its column heads."""

    rows: tuple[AgentListRow, ...]
    headers: tuple[SortHeader, ...]
    text: str
    states: tuple[Option, ...]
    versions: tuple[Option, ...]
    sort: str
    order: str
    matching: int
    fleet_total: int  # every enrolled agent, revoked included
    filtered: bool
    paged: bool
    next_url: str | None
    first_url: str
    clear_url: str
    refused: RefusedParam | None = None  # a refused list parameter, shown next to its field
    chart_range: str = ""  # the chart's range the filter form keeps ("": the default)


@dataclass(frozen=True, slots=True)
class RangeLink:
    """One of the chart's range links (``24 h``): the page at that range, the agent list's
    filters and sort kept, its cursor dropped."""

    label: str
    title: str
    url: str
    current: bool


AGENTS_ANCHOR = "#agents-title"
CHART_ANCHOR = "#chart-title"
_SORTED_COLUMNS: tuple[tuple[str, AgentSort | None], ...] = (
    ("Host", AgentSort.HOST),
    ("Health", AgentSort.HEALTH),
    ("Config version", AgentSort.CONFIG_VERSION),
    ("Agent version", AgentSort.AGENT_VERSION),
    ("Last check-in", AgentSort.LAST_CHECKIN),
    ("Labels & tags", None),
    ("Latest run", None),
)
STATE_LABELS: dict[AgentState, str] = {
    AgentState.ONLINE: "Online",
    AgentState.STALE: "Stale",
    AgentState.OFFLINE: "Offline",
    AgentState.NEVER: "Never checked in",
    AgentState.REVOKED: "Revoked",
}


def list_url(
    q: AgentListQuery,
    chart_range: ChartRange = ChartRange.DAY,
    *,
    after: str | None = None,
    **changes: str | None,
) -> str:
    """``/`` with the agent list's parameters (``changes`` applied) and the chart's range, at
    the list."""
    params = agent_list_params(q, chart_range=chart_range, after=after, **changes)
    return with_query("/", params) + AGENTS_ANCHOR


def range_links(q: AgentListQuery, current: ChartRange) -> tuple[RangeLink, ...]:
    """The chart's range links: each keeps the agent list's filters and sort, not its cursor
    (a page of the list stays a page of the list: the chart does not move it)."""
    return tuple(
        RangeLink(
            f"{r.value[:-1]} {r.value[-1:]}",  # "24h" -> "24 h"
            f"Events in the last {span_words(r.bucket_seconds * r.buckets)}",
            with_query("/", agent_list_params(q, chart_range=r)) + CHART_ANCHOR,
            r is current,
        )
        for r in ChartRange
    )


def _headers(q: AgentListQuery, chart_range: ChartRange) -> tuple[SortHeader, ...]:
    heads: list[SortHeader] = []
    for label, sort in _SORTED_COLUMNS:
        if sort is None:
            heads.append(SortHeader(label, None, "none"))
            continue
        current = sort is q.sort
        order = "desc" if current and not q.descending else None  # a new column: ascending
        aria = ("descending" if q.descending else "ascending") if current else "none"
        by = sort.value if sort is not AgentSort.HOST else None  # host: the default
        heads.append(SortHeader(label, list_url(q, chart_range, sort=by, order=order), aria))
    return tuple(heads)


def agent_list_view(
    q: AgentListQuery,
    found: AgentList,
    now: datetime,
    *,
    versions: Mapping[str, int],
    fleet_total: int,
    latest_runs: Mapping[str, RunRow] | None = None,
    refused: RefusedParam | None = None,
    chart_range: ChartRange = ChartRange.DAY,
) -> AgentListView:
    """The agent list's view model; ``versions``: the config versions the filter offers;
    its links keep ``chart_range`` (the chart on the same page)."""
    runs = latest_runs or {}
    version_options = [
        Option(v or UNREPORTED_VERSION, v or "not reported", v == q.config_version)
        for v in sorted(versions, key=version_key, reverse=True)
    ]
    if q.config_version is not None and q.config_version not in versions:
        shown = q.config_version or UNREPORTED_VERSION
        version_options.append(Option(shown, q.config_version or "not reported", True))
    return AgentListView(
        rows=tuple(_agent_row(a, now, runs.get(a.record.id)) for a in found.agents),
        headers=_headers(q, chart_range),
        text=q.text,
        states=tuple(Option(s.value, STATE_LABELS[s], s is q.state) for s in AgentState),
        versions=tuple(version_options),
        sort=q.sort.value,
        order="desc" if q.descending else "asc",
        matching=found.matching,
        fleet_total=fleet_total,
        filtered=bool(q.text or q.state or q.config_version is not None),
        paged=q.after is not None,
        next_url=list_url(q, chart_range, after=found.next_after) if found.next_after else None,
        first_url=list_url(q, chart_range),
        clear_url=list_url(AgentListQuery(), chart_range),
        refused=refused,
        chart_range=chart_range.value if chart_range is not ChartRange.DAY else "",
    )


@dataclass(frozen=True, slots=True)
class OverviewPage:
    """Everything ``overview.html`` renders."""

    now_iso: str
    now_display: str
    agents_total: int
    health: tuple[HealthCard, ...]
    waiting_runs: int
    active_runs: int
    waiting_url: str
    target_version: str | None
    migrated: int
    agents_with_version: int
    migrated_percent: int
    fleet_size: int  # agents not revoked: the whole the shares are of
    versions: tuple[VersionShare, ...]
    chart: StackedBarChart
    ranges: tuple[RangeLink, ...]
    agent_list: AgentListView
    spec_ids: tuple[str, ...] = ()  # the bulk "run a spec" choices
    range_refused: RefusedParam | None = None  # a refused ``range`` (the chart: the default)


def _percent(part: int, whole: int) -> int:
    """A percentage rounded down, except that any part > 0 shows at least 1 and anything short
    of the whole never shows 100."""
    if whole <= 0 or part <= 0:
        return 0
    value = part * 100 // whole
    if part < whole:
        value = min(value, 99)
    return max(value, 1)


def _agent_row(agent: FleetAgent, now: datetime, latest_run: RunRow | None) -> AgentListRow:
    r = agent.record
    last = r.last_checkin_at
    return AgentListRow(
        id=r.id,
        url=agent_url(r.id),
        hostname=r.hostname,
        health=health_style(agent.health, r.revoked),
        config_version=r.config_version,
        agent_version=r.agent_version,
        last_checkin_iso=last.astimezone(UTC).isoformat() if last else "",
        last_checkin_display=display_time(last) if last else "",
        last_checkin_relative=relative_time(last, now) if last else "",
        labels=tuple(f"{key}={value}" for key, value in r.labels),
        tags=agent.tags,
        latest_run=latest_run,
    )


def overview_page(
    overview: FleetOverview,
    agent_list: AgentListView,
    chart: EventsChart,
    *,
    list_query: AgentListQuery | None = None,
    waiting_runs: int = 0,
    active_runs: int = 0,
    spec_ids: tuple[str, ...] = (),
    range_refused: RefusedParam | None = None,
) -> OverviewPage:
    """The overview's view model. ``list_query``: the agent list's (its health card is marked;
    the chart's range links keep its filters); every link keeps the chart's range. Run figures
    come from the runs service (0 without it)."""
    now = overview.now
    query = list_query or AgentListQuery()
    state = query.state
    chart_range = chart.chart_range
    counts = overview.health_counts
    notes = {
        "online": "checked in recently",
        "stale": "missed a few check-ins",
        "offline": "silent for a long time",
        "never": "enrolled, no check-in yet",
    }
    cards = tuple(
        HealthCard(
            key,
            HEALTH_STYLES[key].label,
            counts.get(key, 0),
            notes[key],
            list_url(AgentListQuery(), chart_range, health=key),
            state is not None and state.value == key,
        )
        for key in ("online", "stale", "offline", "never")
        if key != "never" or counts.get("never", 0)
    )
    total_with_version = overview.reporting
    target = overview.newest_version
    versions = sorted(
        overview.config_versions.items(), key=lambda item: version_key(item[0]), reverse=True
    )
    fleet = sum(overview.config_versions.values())
    shares = tuple(
        VersionShare(
            version or "not reported",
            n,
            _percent(n, fleet),
            version == target,
            list_url(AgentListQuery(), chart_range, version=version or UNREPORTED_VERSION),
        )
        for version, n in versions
    )
    return OverviewPage(
        now_iso=now.astimezone(UTC).isoformat(),
        now_display=display_time(now),
        agents_total=overview.agents_total,
        health=cards,
        waiting_runs=waiting_runs,
        active_runs=active_runs,
        waiting_url="/runs?" + urlencode([("state", "AWAITING_INPUT")]),
        target_version=target,
        migrated=overview.on_newest,
        agents_with_version=total_with_version,
        fleet_size=fleet,
        # One computation: the figure and the table's row of the newest version are the same
        # share of the same fleet (every agent not revoked, reporting a version or not).
        migrated_percent=_percent(overview.on_newest, fleet),
        versions=shares,
        chart=events_chart(chart.buckets, chart_range.bucket_seconds),
        ranges=range_links(query, chart_range),
        agent_list=agent_list,
        spec_ids=spec_ids,
        range_refused=range_refused,
    )


@dataclass(frozen=True, slots=True)
class RequestNotice:
    """The agent page's banner about the run "Run migration now" asked for."""

    text: str
    run_url: str  # the run, once the agent reported it ("" before)
    waiting: bool  # still waiting for the agent: the page refreshes itself


@dataclass(frozen=True, slots=True)
class AgentPage:
    """Everything ``agent.html`` renders."""

    id: str
    hostname: str
    health: HealthStyle
    revoked: bool
    facts: tuple[DetailItem, ...]
    runs: tuple[RunRow, ...]
    events: tuple[EventRow, ...]
    run_now_action: str
    can_run: bool
    run_disabled_reason: str
    history_url: str
    all_runs_url: str
    pending: tuple[str, ...]  # actions queued for the agent, not acknowledged yet
    notice: RequestNotice | None


def pending_action_note(action: PendingAction, now: datetime) -> str:
    """``Run requested by web 5 minutes ago, delivered, waiting for the agent``."""
    what = {
        ActionKind.RUN_MIGRATION: "Run requested",
        ActionKind.CANCEL_RUN: "Cancel requested",
    }.get(action.kind, str(action.kind))
    status = (
        "delivered, waiting for the agent to accept it"
        if action.delivered_at
        else "waiting for the agent's next check-in"
    )
    return f"{what} by {action.requested_by} {relative_time(action.created_at, now)}: {status}."


def agent_page(
    detail: AgentDetail,
    now: datetime,
    *,
    runs: Sequence[RunRow] = (),
    pending: Sequence[str] = (),
    notice: RequestNotice | None = None,
    run_states: Mapping[str, str] | None = None,
) -> AgentPage:
    """The agent page's view model: facts, runs, recent events (``run_states``: the states of
    the runs its events name that exist; a row links only to those)."""
    r = detail.agent.record
    health = health_style(detail.agent.health, r.revoked)
    last = r.last_checkin_at
    checkin = f"{display_time(last)} ({relative_time(last, now)})" if last else "never"
    facts = (
        DetailItem("Hostname", r.hostname),
        DetailItem(
            "Health",
            health.label,
            tone="good" if health.key == "online" else "bad" if health.key in ("offline",) else "",
        ),
        DetailItem("Last check-in", checkin),
        DetailItem("Operating system", r.os or "—"),
        DetailItem("Kernel", r.kernel or "—", mono=True),
        DetailItem("Agent version", r.agent_version or "—", mono=True),
        DetailItem("Config version", r.config_version or "—", mono=True),
        DetailItem("Disk free", human_bytes(r.disk_free_bytes)),
        DetailItem("Enrolled", display_time(r.enrolled_at)),
        DetailItem("Check-in interval", f"{r.checkin_interval_seconds} s"),
        DetailItem("Agent id", r.id, mono=True),
    )
    return AgentPage(
        id=r.id,
        hostname=r.hostname,
        health=health,
        revoked=r.revoked,
        facts=facts,
        runs=tuple(runs),
        events=tuple(event_row(e, now, run_states=run_states or {}) for e in detail.events),
        run_now_action=f"{agent_url(r.id)}/runs",
        can_run=not r.revoked,
        run_disabled_reason="this agent is revoked" if r.revoked else "",
        history_url="/history?" + urlencode([("agent", r.id)]),
        all_runs_url="/runs?" + urlencode([("agent", r.id)]),
        pending=tuple(pending),
        notice=notice,
    )
