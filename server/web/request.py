"""Request helpers shared by every handler: path ids, JSON bodies, and the query string.

Every parameter a URL takes is parsed here: the History filter (the History page, its stream and
``/api/v1/events``), the runs filter (``/runs`` and ``/api/v1/runs``), the log filter (the run
page, its stream and ``/api/v1/runs/{id}/logs``). Filters live in the URL so a filtered view can
be bookmarked and pagination links keep it. A bad value raises
:class:`server.errors.InvalidArgument` naming the parameter (a 400, mapped by
``server.web.middleware``).

Next to each parser, a tuple of :class:`QueryParam` declares what it reads (name, type of one
value with its bounds, repeatable or not): the OpenAPI document's parameters come from those
(``server.web.api.openapi``), and ``tests/test_api_conformance.py`` checks that each parser
reads exactly the names it declares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from agent.specs.validate import SPEC_ID
from server import selectors
from server.domain import (
    UNREPORTED_VERSION,
    AgentListQuery,
    AgentSort,
    AgentState,
    ChartRange,
    EventFilter,
    LogLevel,
    LogQuery,
    RunFilter,
    RunState,
    Severity,
)
from server.errors import InvalidArgument
from server.services import fleet as fleet_service
from server.services import logs as logs_service
from server.services import runs as runs_service
from server.storage.history import known_event_type_filters
from server.web.runs.styles import LOG_LEVELS
from server.web.runs.views import LogLineRow
from server.web.schema import Doc, Time

MAX_ID = 64
MAX_TEXT = 200
MAX_AGENT_ID = 64
MAX_SPEC_ID = 64
MAX_BODY = 16 * 1024
MAX_CURSOR = 2**63 - 1  # History cursors are event ids
HISTORY_MAX_LIMIT = 200
RUNS_PAGE_SIZE = 50
MAX_RUNS_CURSOR = 80  # an encoded runs cursor is about 53 characters
LOG_PAGE_LIMIT = 500
MAX_LOG_SEQ = 2**62
MAX_SOURCE = 128
MAX_SOURCES = 50
_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"", "0", "false", "off", "no"}


@dataclass(frozen=True, slots=True)
class QueryParam:
    """One query parameter as the OpenAPI document describes it. ``type``: the type of one value
    (a type ``server.web.schema.SchemaBuilder`` knows, bounds in ``Annotated``)."""

    name: str
    type: Any
    description: str = ""
    repeat: bool = False


def _bounded(low: int, high: int) -> Any:
    return Annotated[int, Doc(minimum=low, maximum=high)]


def _text(limit: int) -> Any:
    return Annotated[str, Doc(maxLength=limit)]


# --- path, body, generic values ---------------------------------------------------------------


def path_id(request: web.Request, name: str) -> str:
    """A path parameter that must look like an id (printable, bounded) or a 400 naming it."""
    value = request.match_info[name]
    if not value or len(value) > MAX_ID or not value.isprintable():
        raise InvalidArgument("is not a valid id", field=name)
    return value


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


def clean_text(name: str, raw: str, limit: int | None = MAX_TEXT) -> str:
    """Strip ``raw``; reject what the database cannot take as text (NUL, lone surrogates) and
    values longer than ``limit`` (None: no limit)."""
    if "\x00" in raw:
        raise InvalidArgument("must not contain NUL characters", field=name)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("must be valid UTF-8 text", field=name) from None
    value = raw.strip()
    if limit is not None and len(value) > limit:
        raise InvalidArgument(f"must be at most {limit} characters", field=name)
    return value


def single(query: MultiMapping[str], name: str, limit: int | None = MAX_TEXT) -> str:
    """A parameter given at most once (``""`` when absent), cleaned by :func:`clean_text`."""
    values = query.getall(name, [])
    if len(values) > 1:
        raise InvalidArgument("must be given at most once", field=name)
    return clean_text(name, values[0], limit) if values else ""


def parse_int(name: str, raw: str, low: int, high: int) -> int:
    """A decimal integer within ``[low, high]`` or a 400 naming ``name``."""
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidArgument(f"must be an integer between {low} and {high}", field=name)
    return int(raw)


def parse_bool(name: str, raw: str) -> bool:
    """``1/true/on/yes`` or ``0/false/off/no/""`` (any case)."""
    text = raw.lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument("must be 1 or 0", field=name)


def multi(query: MultiMapping[str], name: str, allowed: frozenset[str]) -> tuple[str, ...]:
    """Repeatable parameter: ignore empty values, reject unknown ones, drop duplicates."""
    seen: dict[str, None] = {}
    for raw in query.getall(name, []):
        value = clean_text(name, raw, None)
        if not value:
            continue
        if value not in allowed:
            raise InvalidArgument(f"must be one of {', '.join(sorted(allowed))}", field=name)
        seen[value] = None
    return tuple(seen)


def with_query(path: str, params: list[tuple[str, str]]) -> str:
    """``path?<params>`` (just ``path`` without parameters)."""
    query = urlencode(params)
    return f"{path}?{query}" if query else path


def parse_time(name: str, raw: str) -> datetime | None:
    """An ISO 8601 date-time (or a ``datetime-local`` form value) as an aware UTC datetime.

    Values without a zone are UTC. Empty means "no bound".
    """
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            "must be an ISO 8601 date-time such as 2026-01-31T14:30 (UTC unless a zone is given)",
            field=name,
        ) from None


# --- the History filter -------------------------------------------------------------------

EVENT_QUERY: Final[tuple[QueryParam, ...]] = (
    QueryParam("migration_only", bool, "only migration events (1 or 0)"),
    QueryParam("severity", Severity, repeat=True),
    QueryParam(
        "event_type",
        Annotated[str, Doc(enum=sorted(known_event_type_filters()))],
        "an event type or an outcome such as migration_execution_failed",
        repeat=True,
    ),
    QueryParam("agent", _text(MAX_AGENT_ID), "agent id"),
    QueryParam("spec", _text(MAX_SPEC_ID), "migration spec id: only that spec's events"),
    QueryParam("since", Time, "from this time (UTC unless a zone is given)"),
    QueryParam("until", Time, "up to this time; not earlier than since"),
    QueryParam("q", _text(MAX_TEXT), "free text"),
    QueryParam("before", _bounded(1, MAX_CURSOR), "cursor (event id): next_before of a page"),
    QueryParam("limit", _bounded(1, HISTORY_MAX_LIMIT), "page size (default: the configured one)"),
)


def parse_event_filter(query: MultiMapping[str], default_limit: int) -> EventFilter:
    """Validate the History query parameters and build the filter (see module docstring).

    Parameters: ``migration_only``, ``severity``* , ``event_type``*, ``agent``, ``since``,
    ``until``, ``q``, ``before``, ``limit`` (* repeatable).
    """
    severities = multi(query, "severity", frozenset(s.value for s in Severity))
    event_types = multi(query, "event_type", known_event_type_filters())
    agent = single(query, "agent", None)
    if len(agent) > MAX_AGENT_ID or not agent.isprintable():
        raise InvalidArgument("is not an agent id", field="agent")
    spec = single(query, "spec", MAX_SPEC_ID)
    if spec and SPEC_ID.fullmatch(spec) is None:
        raise InvalidArgument("is not a spec id", field="spec")
    text = single(query, "q", MAX_TEXT)
    since = parse_time("since", single(query, "since", None))
    until = parse_time("until", single(query, "until", None))
    if since is not None and until is not None and until < since:
        raise InvalidArgument("must not be earlier than since", field="until")
    before_raw = single(query, "before", None)
    limit_raw = single(query, "limit", None)
    return EventFilter(
        migration_only=parse_bool("migration_only", single(query, "migration_only", None)),
        severities=tuple(Severity(s) for s in severities),
        event_types=event_types,
        agent_id=agent or None,
        spec_id=spec or None,
        since=since,
        until=until,
        text=text or None,
        before_id=parse_int("before", before_raw, 1, MAX_CURSOR) if before_raw else None,
        limit=parse_int("limit", limit_raw, 1, HISTORY_MAX_LIMIT) if limit_raw else default_limit,
    )


def format_time(value: datetime) -> str:
    """A UTC datetime as a zone-less ISO value (a ``datetime-local`` value when it has no
    fraction of a second), which ``parse_time`` reads back as the same UTC instant."""
    naive = value.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(timespec="microseconds" if naive.microsecond else "seconds")


def filter_params(
    f: EventFilter, default_limit: int, *, before_id: int | None = None
) -> list[tuple[str, str]]:
    """The query parameters that reproduce ``f`` (without its cursor), plus ``before_id``."""
    params: list[tuple[str, str]] = []
    if f.migration_only:
        params.append(("migration_only", "1"))
    params.extend(("severity", s.value) for s in f.severities)
    params.extend(("event_type", t) for t in f.event_types)
    if f.agent_id:
        params.append(("agent", f.agent_id))
    if f.spec_id:
        params.append(("spec", f.spec_id))
    if f.since is not None:
        params.append(("since", format_time(f.since)))
    if f.until is not None:
        params.append(("until", format_time(f.until)))
    if f.text:
        params.append(("q", f.text))
    if f.limit != default_limit:
        params.append(("limit", str(f.limit)))
    if before_id is not None:
        params.append(("before", str(before_id)))
    return params


def filter_url(
    path: str, f: EventFilter, default_limit: int, *, before_id: int | None = None
) -> str:
    """``path`` with the query string of :func:`filter_params`."""
    return with_query(path, filter_params(f, default_limit, before_id=before_id))


def is_filtered(f: EventFilter) -> bool:
    """True when any filter (not the cursor or page size) narrows the result."""
    return bool(
        f.migration_only
        or f.severities
        or f.event_types
        or f.agent_id
        or f.spec_id
        or f.since
        or f.until
        or f.text
    )


# --- the runs filter --------------------------------------------------------------------------

RUN_QUERY: Final[tuple[QueryParam, ...]] = (
    QueryParam("state", RunState, "any case", repeat=True),
    QueryParam("agent", _text(MAX_AGENT_ID), "agent id"),
    QueryParam("before", _text(MAX_RUNS_CURSOR), "cursor: next_before of the previous page"),
    QueryParam(
        "limit", _bounded(1, runs_service.MAX_LIST_LIMIT), f"page size (default {RUNS_PAGE_SIZE})"
    ),
)


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
    """``state`` (repeatable, any case), ``agent``, ``before`` (opaque cursor, checked here),
    ``limit`` (1-500, as the OpenAPI document says; default 50). The ``/runs`` page and
    ``/api/v1/runs`` share it."""
    agent = single(query, "agent", MAX_AGENT_ID)
    if agent and not agent.isprintable():
        raise InvalidArgument("is not an agent id", field="agent")
    before = single(query, "before", MAX_RUNS_CURSOR)
    if before:
        runs_service.decode_cursor(before)
    limit = single(query, "limit", 8)
    return RunFilter(
        states=_states(query),
        agent_id=agent or None,
        before=before or None,
        limit=parse_int("limit", limit, 1, runs_service.MAX_LIST_LIMIT)
        if limit
        else RUNS_PAGE_SIZE,
    )


def run_filter_params(f: RunFilter, before: str | None = None) -> list[tuple[str, str]]:
    """The query parameters that reproduce ``f`` (without its cursor), plus ``before``."""
    params = [("state", s.value) for s in f.states]
    if f.agent_id:
        params.append(("agent", f.agent_id))
    if f.limit != RUNS_PAGE_SIZE:
        params.append(("limit", str(f.limit)))
    if before:
        params.append(("before", before))
    return params


# --- the log filter ---------------------------------------------------------------------------

LOG_QUERY: Final[tuple[QueryParam, ...]] = (
    QueryParam("level", LogLevel, "any case", repeat=True),
    QueryParam("source", _text(MAX_SOURCE), f"at most {MAX_SOURCES} sources", repeat=True),
    QueryParam("q", _text(MAX_TEXT), "case-insensitive text in the message"),
    QueryParam("after_seq", _bounded(0, MAX_LOG_SEQ), "lines after this seq (next_after_seq)"),
    QueryParam(
        "limit", _bounded(1, logs_service.MAX_LIMIT), f"page size (default {LOG_PAGE_LIMIT})"
    ),
)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which log lines to show: levels and sources (empty: all) and a text to find."""

    levels: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    text: str = ""

    @property
    def active(self) -> bool:
        return bool(self.levels or self.sources or self.text)

    def matches(self, line: LogLineRow) -> bool:
        """The filter applied to one line (the live stream filters in Python: it reads every
        line to keep its cursor gap-free). Text: case-insensitive substring of the message."""
        if self.levels and line.level.upper() not in self.levels:
            return False
        if self.sources and line.source not in self.sources:
            return False
        return not self.text or self.text.casefold() in line.message.casefold()

    def params(self) -> list[tuple[str, str]]:
        """The query parameters that reproduce this filter."""
        out = [("level", level) for level in self.levels]
        out.extend(("source", source) for source in self.sources)
        if self.text:
            out.append(("q", self.text))
        return out

    def url(self, path: str, extra: list[tuple[str, str]] | None = None) -> str:
        """``path`` with this filter (and ``extra``) as its query string."""
        return with_query(path, [*self.params(), *(extra or [])])


def parse_log_filter(query: MultiMapping[str]) -> LogFilter:
    """``level`` (repeatable: DEBUG, INFO, WARNING, ERROR; any case), ``source`` (repeatable),
    ``q`` (text). Empty values are ignored."""
    levels: dict[str, None] = {}
    for raw in query.getall("level", []):
        value = clean_text("level", raw, 16).upper()
        if not value:
            continue
        if value not in LOG_LEVELS:
            raise InvalidArgument(f"must be one of {', '.join(LOG_LEVELS)}", field="level")
        levels[value] = None
    sources: dict[str, None] = {}
    for raw in query.getall("source", []):
        value = clean_text("source", raw, MAX_SOURCE)
        if value:
            sources[value] = None
    if len(sources) > MAX_SOURCES:
        raise InvalidArgument(f"must be given at most {MAX_SOURCES} times", field="source")
    ordered = tuple(level for level in LOG_LEVELS if level in levels)
    return LogFilter(levels=ordered, sources=tuple(sources), text=single(query, "q"))


def parse_log_query(query: MultiMapping[str]) -> LogQuery:
    """``level``*, ``source``*, ``q``, ``after_seq``, ``limit`` (1-5000) (* repeatable)."""
    f = parse_log_filter(query)
    after = single(query, "after_seq", 20)
    limit = single(query, "limit", 8)
    return LogQuery(
        levels=f.levels,
        sources=f.sources,
        text=f.text or None,
        after_seq=parse_int("after_seq", after, 0, MAX_LOG_SEQ) if after else 0,
        limit=parse_int("limit", limit, 1, logs_service.MAX_LIMIT) if limit else LOG_PAGE_LIMIT,
    )


# --- target selectors -------------------------------------------------------------------------

SELECT_COUNT_LIMIT = 10  # hostnames shown beside the live count
MAX_SELECT_COUNT_LIMIT = 100
SELECT_QUERY: Final[tuple[QueryParam, ...]] = (
    QueryParam(
        "select",
        _text(selectors.MAX_EXPRESSION),
        "selector expression (env=prod, 'role in (db,cache)', !canary, host=web-*, id=ID, "
        "health=online|offline|any; default online); repeat: all must hold",
        repeat=True,
    ),
)
SELECT_COUNT_QUERY: Final[tuple[QueryParam, ...]] = (
    *SELECT_QUERY,
    QueryParam(
        "limit",
        _bounded(0, MAX_SELECT_COUNT_LIMIT),
        f"hostnames to return (default {SELECT_COUNT_LIMIT})",
    ),
)


def parse_select(query: MultiMapping[str]) -> list[str]:
    """Every ``select`` expression, as given (``server.selectors`` parses them)."""
    return [
        clean_text(f"select[{i}]", raw, selectors.MAX_EXPRESSION)
        for i, raw in enumerate(query.getall("select", []))
    ]


def parse_select_count(query: MultiMapping[str]) -> tuple[list[str], int]:
    """``select`` (repeatable) and ``limit`` (0-100, default 10)."""
    limit = single(query, "limit", 8)
    return parse_select(query), (
        parse_int("limit", limit, 0, MAX_SELECT_COUNT_LIMIT) if limit else SELECT_COUNT_LIMIT
    )


# --- exports ----------------------------------------------------------------------------------

EXPORT_FORMATS: Final[tuple[str, ...]] = ("csv", "jsonl")
_EXPORT_FORMAT = QueryParam(
    "format",
    Annotated[str, Doc(enum=list(EXPORT_FORMATS))],
    "csv (a header row, then one row per item) or jsonl (one JSON object per line)",
)
_EXPORT_NOTE = "accepted as by the list; not used: an export streams every matching row"


def _export_query(params: tuple[QueryParam, ...], cursor_note: str) -> tuple[QueryParam, ...]:
    """An export's parameters: ``format`` and the list's own (same names, same validation)."""
    out = [_EXPORT_FORMAT]
    for param in params:
        if param.name == "limit":
            param = QueryParam("limit", param.type, _EXPORT_NOTE)
        elif param.name == "before":
            param = QueryParam("before", param.type, cursor_note)
        out.append(param)
    return tuple(out)


EVENT_EXPORT_QUERY: Final[tuple[QueryParam, ...]] = _export_query(
    EVENT_QUERY, "start below this event id (resume an export from the last id received)"
)
RUN_EXPORT_QUERY: Final[tuple[QueryParam, ...]] = _export_query(
    RUN_QUERY, "start after this cursor (a next_before of the list)"
)


def parse_export_format(query: MultiMapping[str]) -> str:
    """``format``: ``csv`` or ``jsonl`` (required), or a 400 naming it."""
    value = single(query, "format", 16).lower()
    if value not in EXPORT_FORMATS:
        raise InvalidArgument(f"must be one of {', '.join(EXPORT_FORMATS)}", field="format")
    return value


def parse_event_export(query: MultiMapping[str], default_limit: int) -> tuple[str, EventFilter]:
    """``GET /api/v1/events/export``: the format and the History filter (``limit`` unused)."""
    f = parse_event_filter(query, default_limit)
    return parse_export_format(query), f


def parse_run_export(query: MultiMapping[str]) -> tuple[str, RunFilter]:
    """``GET /api/v1/runs/export``: the format and the runs filter (``limit`` unused)."""
    f = parse_run_filter(query)
    return parse_export_format(query), f


def event_export_url(f: EventFilter, default_limit: int, fmt: str) -> str:
    """The export of the History filtered by ``f`` (every page: no cursor, no page size)."""
    unpaged = replace(f, before_id=None, limit=default_limit)
    return with_query(
        "/api/v1/events/export", [("format", fmt), *filter_params(unpaged, default_limit)]
    )


def run_export_url(f: RunFilter, fmt: str) -> str:
    """The export of the runs filtered by ``f`` (every page: no cursor, no page size)."""
    unpaged = replace(f, before=None, limit=RUNS_PAGE_SIZE)
    return with_query("/api/v1/runs/export", [("format", fmt), *run_filter_params(unpaged)])


# --- the agent list (the fleet overview) --------------------------------------------------------

AGENT_LIST_PAGE_SIZE = 100
_E = TypeVar("_E", bound=StrEnum)
MAX_AGENT_CURSOR = 1024  # an encoded agent-list cursor: four JSON strings, base64

AGENT_LIST_QUERY: Final[tuple[QueryParam, ...]] = (
    QueryParam("q", _text(MAX_TEXT), "hostname or label substring, id prefix, or key=value"),
    QueryParam("health", AgentState, "online, stale, offline, never or revoked"),
    QueryParam("version", _text(MAX_ID), f"config version ({UNREPORTED_VERSION}: not reported)"),
    QueryParam("sort", AgentSort, f"column (default {AgentSort.HOST.value})"),
    QueryParam("order", _text(4), "asc (default) or desc"),
    QueryParam("after", _text(MAX_AGENT_CURSOR), "cursor: the next page link's after"),
)
CHART_QUERY: Final[tuple[QueryParam, ...]] = (
    QueryParam("range", ChartRange, f"events chart range (default {ChartRange.DAY.value})"),
)


def _choice(query: MultiMapping[str], name: str, kind: type[_E]) -> _E | None:
    raw = single(query, name, MAX_ID).lower()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        names = ", ".join(v.value for v in kind)
        raise InvalidArgument(f"must be one of {names}", field=name) from None


def parse_agent_list(query: MultiMapping[str]) -> AgentListQuery:
    """The fleet overview's agent list: ``q``, ``health``, ``version``, ``sort``, ``order``,
    ``after`` (a cursor of the same sort)."""
    version = single(query, "version", MAX_ID)
    order = single(query, "order", 4).lower()
    if order not in ("", "asc", "desc"):
        raise InvalidArgument("must be asc or desc", field="order")
    sort = _choice(query, "sort", AgentSort) or AgentSort.HOST
    after = single(query, "after", MAX_AGENT_CURSOR)
    return AgentListQuery(
        text=single(query, "q", MAX_TEXT).strip(),
        state=_choice(query, "health", AgentState),
        config_version=None if not version else "" if version == UNREPORTED_VERSION else version,
        sort=sort,
        descending=order == "desc",
        after=fleet_service.decode_list_cursor(after, sort) if after else None,
        limit=AGENT_LIST_PAGE_SIZE,
    )


def parse_chart_range(query: MultiMapping[str]) -> ChartRange:
    """The fleet overview's events chart: ``range`` (24h by default, 7d or 30d; any case)."""
    return _choice(query, "range", ChartRange) or ChartRange.DAY


def agent_list_params(
    q: AgentListQuery,
    *,
    chart_range: ChartRange = ChartRange.DAY,
    after: str | None = None,
    **changes: str | None,
) -> list[tuple[str, str]]:
    """The query parameters that reproduce ``q``'s filters and sort (without its cursor) and
    the overview's ``chart_range``, with ``changes`` (a value of None drops that parameter),
    plus ``after``."""
    version = q.config_version
    params: dict[str, str | None] = {
        "q": q.text,
        "health": q.state.value if q.state else None,
        "version": None if version is None else version or UNREPORTED_VERSION,
        "sort": q.sort.value if q.sort is not AgentSort.HOST else None,
        "order": "desc" if q.descending else None,
        "range": chart_range.value if chart_range is not ChartRange.DAY else None,
    }
    params.update(changes)
    pairs = [(name, value) for name, value in params.items() if value]
    return [*pairs, ("after", after)] if after else pairs
