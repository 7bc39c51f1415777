"""History query parameters: URL query string <-> :class:`server.domain.EventFilter`.

The History page and ``/api/v1/events`` share these parameters; every filter lives in the URL so
a filtered view can be bookmarked and pagination links keep it. A bad value raises
:class:`server.errors.InvalidArgument` naming the parameter (a 400).
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from multidict import MultiMapping

from server.domain import EventFilter, Severity
from server.errors import InvalidArgument
from server.storage.history import known_event_type_filters

MAX_LIMIT = 200
MAX_TEXT = 200
MAX_AGENT_ID = 64
MAX_CURSOR = 2**63 - 1
_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"", "0", "false", "off", "no"}


def _clean(name: str, raw: str) -> str:
    """Reject values the database cannot take as text (NUL, lone surrogates)."""
    if "\x00" in raw:
        raise InvalidArgument("must not contain NUL characters", field=name)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("must be valid UTF-8 text", field=name) from None
    return raw.strip()


def _single(query: MultiMapping[str], name: str) -> str:
    values = query.getall(name, [])
    if len(values) > 1:
        raise InvalidArgument("must be given at most once", field=name)
    return _clean(name, values[0]) if values else ""


def _parse_bool(name: str, raw: str) -> bool:
    text = raw.lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument("must be 1 or 0", field=name)


def _parse_int(name: str, raw: str, low: int, high: int) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise InvalidArgument(f"must be an integer between {low} and {high}", field=name)
    value = int(raw)
    if not low <= value <= high:
        raise InvalidArgument(f"must be an integer between {low} and {high}", field=name)
    return value


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


def _multi(query: MultiMapping[str], name: str, allowed: frozenset[str]) -> tuple[str, ...]:
    """Repeatable parameter: ignore empty values, reject unknown ones, drop duplicates."""
    seen: dict[str, None] = {}
    for raw in query.getall(name, []):
        value = _clean(name, raw)
        if not value:
            continue
        if value not in allowed:
            raise InvalidArgument(f"must be one of {', '.join(sorted(allowed))}", field=name)
        seen[value] = None
    return tuple(seen)


def parse_event_filter(query: MultiMapping[str], default_limit: int) -> EventFilter:
    """Validate the History query parameters and build the filter (see module docstring).

    Parameters: ``migration_only``, ``severity``* , ``event_type``*, ``agent``, ``since``,
    ``until``, ``q``, ``before``, ``limit`` (* repeatable).
    """
    severities = _multi(query, "severity", frozenset(s.value for s in Severity))
    event_types = _multi(query, "event_type", known_event_type_filters())
    agent = _single(query, "agent")
    if len(agent) > MAX_AGENT_ID or not agent.isprintable():
        raise InvalidArgument("is not an agent id", field="agent")
    text = _single(query, "q")
    if len(text) > MAX_TEXT:
        raise InvalidArgument(f"must be at most {MAX_TEXT} characters", field="q")
    since = parse_time("since", _single(query, "since"))
    until = parse_time("until", _single(query, "until"))
    if since is not None and until is not None and until < since:
        raise InvalidArgument("must not be earlier than since", field="until")
    before_raw = _single(query, "before")
    limit_raw = _single(query, "limit")
    return EventFilter(
        migration_only=_parse_bool("migration_only", _single(query, "migration_only")),
        severities=tuple(Severity(s) for s in severities),
        event_types=event_types,
        agent_id=agent or None,
        since=since,
        until=until,
        text=text or None,
        before_id=_parse_int("before", before_raw, 1, MAX_CURSOR) if before_raw else None,
        limit=_parse_int("limit", limit_raw, 1, MAX_LIMIT) if limit_raw else default_limit,
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
    query = urlencode(filter_params(f, default_limit, before_id=before_id))
    return f"{path}?{query}" if query else path


def is_filtered(f: EventFilter) -> bool:
    """True when any filter (not the cursor or page size) narrows the result."""
    return bool(
        f.migration_only
        or f.severities
        or f.event_types
        or f.agent_id
        or f.since
        or f.until
        or f.text
    )
