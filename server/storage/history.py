"""Read queries behind the History page and ``/api/v1/events``.

Every query is ``<filters> ORDER BY update_events.id DESC LIMIT n`` with a keyset cursor
(``id < before_id``), never OFFSET, so each page costs the same however deep it is. All values
reach the database as bound parameters; the same statements run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    and_,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
)
from sqlalchemy import text as text_sql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from server.domain import (
    SHORT_TEXT_SCAN,
    EventFilter,
    EventStatus,
    EventType,
    StoredEvent,
    outcome_name,
)
from server.storage import search
from server.storage.models import Agent, UpdateEvent

# outcome name ("migration_execution_failed") -> (event_type, status)
_OUTCOMES: dict[str, tuple[str, str]] = {
    outcome_name(event_type, status): (event_type.value, status.value)
    for event_type in EventType
    for status in EventStatus
}


def known_event_type_filters() -> frozenset[str]:
    """Every value ``EventFilter.event_types`` accepts: event types and outcome names."""
    return frozenset({t.value for t in EventType} | set(_OUTCOMES))


def _unindexed(column: InstrumentedAttribute[Any]) -> ColumnElement[Any]:
    """``+column``: the same value, which SQLite's planner will not look up in an index."""
    return UnaryExpression(column.expression, operator=custom_op("+"), type_=column.type)


def _column(column: InstrumentedAttribute[Any]) -> ColumnElement[Any]:
    """The column as it is (see :func:`_unindexed`)."""
    return column.expression


def _event_type_condition(
    values: tuple[str, ...], col: Callable[[InstrumentedAttribute[Any]], ColumnElement[Any]]
) -> ColumnElement[bool]:
    """``event_type IN (...)`` OR ``(event_type, status) = outcome`` for outcome names."""
    plain = [v for v in values if v not in _OUTCOMES]
    clauses: list[ColumnElement[bool]] = []
    if plain:
        clauses.append(col(UpdateEvent.event_type).in_(plain))
    for value in values:
        if value in _OUTCOMES:
            event_type, status = _OUTCOMES[value]
            clauses.append(
                and_(col(UpdateEvent.event_type) == event_type, col(UpdateEvent.status) == status)
            )
    return or_(*clauses) if clauses else false()


def _text_condition(
    text: str, dialect: str, host_agents: Sequence[str], indexed: bool = True
) -> ColumnElement[bool]:
    """Case-insensitive substring match of message, error message, event id, run id or the
    agent's hostname; ``%``, ``_`` and the escape character are escaped (``autoescape``) and
    every value is a bound parameter.

    A text of 3 characters or more is first looked up in the trigram index of the message and
    error message (:mod:`server.storage.search`: FTS5 on SQLite, ``pg_trgm`` on PostgreSQL),
    which yields a superset of the rows; the per-column test then keeps exactly the rows the
    plain scan would. The ids are scanned plainly, and only for a text that could be part of
    one (hex digits and dashes). Shorter texts have no trigram and use the plain scan (as does
    ``indexed=False``: see :func:`query_events`). The hostname was matched in ``agents``
    beforehand (:func:`_agents_by_hostname`: ``host_agents``), its events are found by
    ``agent_id`` (an index; an OR of two indexed terms is a bitmap / multi-index OR for the
    planner, a sub-select there would not be)."""
    texts: list[Any] = [UpdateEvent.message, UpdateEvent.error_message]
    exact = or_(*(column.icontains(text, autoescape=True) for column in texts))
    ids = [
        column.icontains(text, autoescape=True)
        for column in (UpdateEvent.event_id, UpdateEvent.run_id)
    ]
    by_host = [UpdateEvent.agent_id.in_(list(host_agents))] if host_agents else []
    if not indexed or len(text) < search.MIN_INDEXED_LENGTH:
        return or_(exact, *ids, *by_host)
    if not search.could_be_id(text):
        ids = []  # an id is hex digits and dashes: no id contains this text
    prefilter: ColumnElement[bool]
    if dialect == "postgresql":
        escaped = text.replace("/", "//").replace("%", "/%").replace("_", "/_")
        prefilter = literal_column(search.PG_EXPRESSION).ilike(literal(f"%{escaped}%"), escape="/")
    else:
        prefilter = UpdateEvent.id.in_(
            select(literal_column("rowid"))
            .select_from(table(search.FTS_TABLE))
            .where(literal_column(search.FTS_TABLE).op("MATCH")(search.match_phrase(text)))
        )
    return or_(and_(prefilter, exact), *ids, *by_host)


async def _agents_by_hostname(session: AsyncSession, text: str) -> list[str]:
    """Ids of the agents whose hostname contains ``text`` (case-insensitively, as
    :func:`_text_condition` matches the other columns)."""
    result = await session.execute(
        select(Agent.id).where(Agent.hostname.icontains(text, autoescape=True))
    )
    return list(result.scalars())


def _conditions(
    f: EventFilter,
    dialect: str,
    host_agents: Sequence[str] = (),
    indexed: bool = True,
    *,
    past_window: bool = False,
    text_drives: bool = False,
) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``f`` (all bound parameters); ``host_agents``: the agents whose
    hostname contains ``f.text`` (:func:`_agents_by_hostname`); ``indexed``: whether the text
    may use the search index; ``past_window``: :func:`is_past_window`; ``text_drives``: the
    text's search index holds few rows below the cursor (:func:`_few_text_matches`).

    One agent's events are found through ``(agent_id, id)`` (an agent holds a small share of
    the History); SQLite keeps no statistics unless told to (``ANALYZE`` blocks writers for
    its whole scan), so its planner is kept off the other filters' indexes, which it would
    otherwise prefer and walk through every agent's rows (BENCHMARKS.md, "History filter
    combinations"). For the same reason, in a past window SQLite is kept off the cursor's id
    range (the History page's first page has one: the live stream's horizon): it would walk
    every newer row down to the window (a day of errors 20 days ago: 700 ms at 10M events)
    where the window's index holds the window's ids. And when a text is rare
    (``text_drives``), SQLite reads the rows the search index lists instead of walking another
    filter's index through the History checking each row against that list (a rare word among
    the errors: 100 ms at 10M events)."""
    sqlite = dialect == "sqlite"
    col: Callable[[InstrumentedAttribute[Any]], ColumnElement[Any]] = (
        _unindexed if sqlite and (f.agent_id is not None or text_drives) else _column
    )
    cursor = _unindexed if sqlite and (past_window or text_drives) else _column
    where: list[ColumnElement[bool]] = []
    if f.migration_only:
        where.append(col(UpdateEvent.category) == "migration")
    if f.severities:
        where.append(col(UpdateEvent.severity).in_([str(s) for s in f.severities]))
    if f.event_types:
        where.append(_event_type_condition(f.event_types, col))
    if f.agent_id is not None:
        where.append(UpdateEvent.agent_id == f.agent_id)
    if f.spec_id is not None:
        where.append(col(UpdateEvent.spec_id) == f.spec_id)
    if f.since is not None:
        where.append(col(UpdateEvent.occurred_at) >= f.since)
    if f.until is not None:
        where.append(col(UpdateEvent.occurred_at) <= f.until)
    if f.text:
        where.append(_text_condition(f.text, dialect, host_agents, indexed))
    if f.before_id is not None:
        where.append(cursor(UpdateEvent.id) < f.before_id)
    if f.after_id is not None:
        where.append(cursor(UpdateEvent.id) > f.after_id)
    return where


def _fold(text: str, ascii_only: bool) -> str:
    """Lower-case as the database's ``icontains`` does: SQLite's ``lower()`` folds ASCII only,
    PostgreSQL's ``ILIKE`` folds every letter."""
    if not ascii_only:
        return text.lower()
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def event_matches(f: EventFilter, event: StoredEvent, *, ascii_case: bool) -> bool:
    """Whether ``event`` is among the rows :func:`_conditions` selects for ``f`` (the live
    streams' shared reader filters in Python what it read unfiltered; ``f.before_id`` /
    ``f.after_id`` / ``f.limit`` are ignored, as by :func:`query_events_after`).
    ``ascii_case``: fold case as SQLite does (True) or as PostgreSQL does (False)."""
    if f.migration_only and event.category != "migration":
        return False
    if f.severities and event.severity not in {str(s) for s in f.severities}:
        return False
    if f.event_types and not _type_matches(f.event_types, event):
        return False
    if f.agent_id is not None and event.agent_id != f.agent_id:
        return False
    if f.spec_id is not None and event.spec_id != f.spec_id:
        return False
    if f.since is not None and event.occurred_at < f.since:
        return False
    if f.until is not None and event.occurred_at > f.until:
        return False
    if f.text:
        needle = _fold(f.text, ascii_case)
        fields = (
            event.message,
            event.error_message,
            event.hostname,
            event.event_id,
            event.run_id or "",
        )
        if not any(needle in _fold(value, ascii_case) for value in fields):
            return False
    return True


def _type_matches(values: tuple[str, ...], event: StoredEvent) -> bool:
    """The Python side of :func:`_event_type_condition`."""
    for value in values:
        outcome = _OUTCOMES.get(value)
        if outcome is None and event.event_type == value:
            return True
        if outcome is not None and (event.event_type, event.status) == outcome:
            return True
    return False


def _select_events() -> Select[*tuple[Any, ...]]:
    """Every column a :class:`StoredEvent` needs, with the agent's hostname."""
    return select(
        UpdateEvent.id,
        UpdateEvent.event_id,
        UpdateEvent.agent_id,
        Agent.hostname,
        UpdateEvent.category,
        UpdateEvent.event_type,
        UpdateEvent.status,
        UpdateEvent.severity,
        UpdateEvent.message,
        UpdateEvent.error_message,
        UpdateEvent.error_detail,
        UpdateEvent.migration_from,
        UpdateEvent.migration_to,
        UpdateEvent.run_id,
        UpdateEvent.system_info,
        UpdateEvent.occurred_at,
        UpdateEvent.received_at,
        UpdateEvent.spec_id,
        UpdateEvent.spec_revision,
        UpdateEvent.action_id,
    ).join(Agent, Agent.id == UpdateEvent.agent_id)


def _stored(row: Row[*tuple[Any, ...]]) -> StoredEvent:
    return StoredEvent(
        id=row.id,
        event_id=row.event_id,
        agent_id=row.agent_id,
        hostname=row.hostname,
        category=row.category,
        event_type=row.event_type,
        status=row.status,
        severity=row.severity,
        message=row.message or "",
        error_message=row.error_message or "",
        error_detail=dict(row.error_detail or {}),
        migration_from=row.migration_from or "",
        migration_to=row.migration_to or "",
        run_id=row.run_id or None,
        system_info={str(k): str(v) for k, v in (row.system_info or {}).items()},
        occurred_at=row.occurred_at,
        received_at=row.received_at,
        spec_id=row.spec_id or "",
        spec_revision=int(row.spec_revision or 0),
        action_id=row.action_id or "",
    )


# A text search first scans this many of the newest ids plainly: a frequent text fills the
# page there at once, where the index would list every one of its (many) rows first; a rare
# text costs this short scan more, then the index serves the rest.
PLAIN_WINDOW = 5_000


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def _fetch(
    session: AsyncSession,
    where: list[ColumnElement[bool]],
    limit: int,
    newest_first: bool,
    *,
    past_window: bool = False,
) -> list[StoredEvent]:
    """The page: rows matching ``where`` in id order, at most ``limit`` (``past_window``: see
    :func:`page_query`)."""
    query = page_query(_dialect(session), where, limit, newest_first, past_window=past_window)
    result = await session.execute(query)
    return [_stored(row) for row in result]


def page_query(
    dialect: str,
    where: list[ColumnElement[bool]],
    limit: int,
    newest_first: bool,
    *,
    past_window: bool = False,
) -> Select[*tuple[Any, ...]]:
    """The statement :func:`_fetch` runs (also what the plan tests explain).

    The page's ids are picked first, then only their rows are read. SQLite: always; every
    index of ``update_events`` holds the id (the rowid), so a time window's ids are found and
    sorted in the index alone, where one query sorted the window's whole rows (10M events:
    errors in one day 83 ms, warnings over 7 days 317 ms; BENCHMARKS.md). PostgreSQL, for a
    ``past_window`` (:func:`is_past_window`): the window indexes include the id (alembic 0016)
    and the ids are ordered by ``id + 0``, which no index provides: otherwise the planner
    walks the primary key from the newest row, expecting the window's rows to be spread over
    the whole History, and reads every newer row first (1.6 s for a day 20 days ago)."""
    order = UpdateEvent.id.desc() if newest_first else UpdateEvent.id.asc()
    query = _select_events()
    if dialect == "sqlite" or past_window:
        key = UpdateEvent.id + 0 if dialect == "postgresql" else UpdateEvent.id
        page = (
            select(UpdateEvent.id)
            .where(*where)
            .order_by(key.desc() if newest_first else key.asc())
            .limit(limit)
        )
        query = query.where(UpdateEvent.id.in_(page))
    else:
        query = query.where(*where).limit(limit)
    return query.order_by(order)


def is_past_window(f: EventFilter, now: datetime) -> bool:
    """A window with both ends that lies further back than it is long, without an agent (one
    agent's rows are read through ``(agent_id, id)``): its rows sit below everything newer."""
    if f.since is None or f.until is None or f.agent_id is not None:
        return False
    return f.until - f.since <= now - f.until


@dataclass(frozen=True, slots=True)
class EventRows:
    """What :func:`query_events` read: up to ``f.limit + 1`` rows, newest first, and for a
    short text's scan that stopped at its bound before the page filled, ``unsearched_below``:
    the rows with a lower id were not examined (the next page's cursor)."""

    rows: list[StoredEvent]
    unsearched_below: int | None = None


async def query_events(session: AsyncSession, f: EventFilter) -> EventRows:
    """Events matching ``f``, newest (highest id) first.

    Returns up to ``f.limit + 1`` rows: the extra row tells the caller an older page exists
    (the service trims it and derives the next cursor). ``before_id`` / ``after_id`` bound the
    id range exclusively; ``since`` / ``until`` bound ``occurred_at`` inclusively.

    A text of 3+ characters: the newest :data:`PLAIN_WINDOW` ids below the cursor are scanned
    plainly, then (page not full) the older ids through the search index; the two id ranges
    are disjoint and consecutive, so the rows and their order are those of one query. A text
    of 1-2 characters: at most :data:`server.domain.SHORT_TEXT_SCAN` rows are examined
    (:func:`_short_text_rows`).
    """
    dialect = _dialect(session)
    if dialect == "postgresql":
        # A prepared statement's generic plan (chosen after five runs) cannot see the values:
        # how selective a pattern (it fell back to scanning the primary key) or a window is.
        # Plan each page for its own values (planning takes well under 2 ms).
        await session.execute(text_sql("SET LOCAL plan_cache_mode = force_custom_plan"))
    hosts = await _agents_by_hostname(session, f.text) if f.text else []
    want = f.limit + 1
    if not f.text or len(f.text) < search.MIN_INDEXED_LENGTH:
        past = is_past_window(f, datetime.now(UTC))
        if f.text:
            return await _short_text_rows(session, f, hosts, past)
        where = _conditions(f, dialect, hosts, past_window=past)
        return EventRows(await _fetch(session, where, want, True, past_window=past))
    top = f.before_id - 1 if f.before_id is not None else await max_event_id(session)
    floor = top - PLAIN_WINDOW  # the plain scan reads floor < id <= top
    newest = await _fetch(
        session,
        [*_conditions(f, dialect, hosts, indexed=False), UpdateEvent.id > floor],
        want,
        True,
    )
    if len(newest) >= want or (f.after_id is not None and f.after_id >= floor):
        return EventRows(newest)
    drives = dialect == "sqlite" and await _few_text_matches(session, f.text, hosts, floor)
    bound = _unindexed(UpdateEvent.id) if drives else UpdateEvent.id
    older = await _fetch(
        session,
        [*_conditions(f, dialect, hosts, text_drives=drives), bound <= floor],
        want - len(newest),
        True,
    )
    return EventRows(newest + older)


async def _short_text_rows(
    session: AsyncSession, f: EventFilter, host_agents: Sequence[str], past: bool
) -> EventRows:
    """The page of a text of 1-2 characters: the ids of the newest ``SHORT_TEXT_SCAN`` rows the
    other filters select below the cursor are found first, then only those rows are matched
    against the text. When there were that many, the rows below them remain unexamined: a
    page that did not fill says where it stopped."""
    dialect = _dialect(session)
    others = _conditions(replace(f, text=None), dialect, past_window=past)
    key = UpdateEvent.id + 0 if dialect == "postgresql" and past else UpdateEvent.id
    candidates = (
        select(UpdateEvent.id.label("id"))
        .where(*others)
        .order_by(key.desc())
        .limit(SHORT_TEXT_SCAN)
        .subquery()
    )
    count, lowest = (await session.execute(select(func.count(), func.min(candidates.c.id)))).one()
    where = _conditions(f, dialect, host_agents, past_window=past)
    if count < SHORT_TEXT_SCAN:
        return EventRows(await _fetch(session, where, f.limit + 1, True, past_window=past))
    bound = _unindexed(UpdateEvent.id) if dialect == "sqlite" and past else UpdateEvent.id
    rows = await _fetch(session, [*where, bound >= lowest], f.limit + 1, True, past_window=past)
    return EventRows(rows, None if len(rows) > f.limit else int(lowest))


# A text with at most this many rows in SQLite's search index (below the cursor) is looked up
# there first; counting stops here, so asking costs at most this many index entries.
FEW_TEXT_MATCHES = 2_000


async def _few_text_matches(
    session: AsyncSession, text: str, host_agents: Sequence[str], upto_id: int
) -> bool:
    """Whether the search index lists at most :data:`FEW_TEXT_MATCHES` rows with ids up to
    ``upto_id`` for ``text``, and those are all the text can match (no hostname matched it,
    and it cannot be part of an id: those rows are not in the index)."""
    if host_agents or search.could_be_id(text):
        return False
    fts = table(search.FTS_TABLE)
    rowid = literal_column("rowid", Integer)
    matches = (
        select(rowid)
        .select_from(fts)
        .where(literal_column(search.FTS_TABLE).op("MATCH")(search.match_phrase(text)))
        .where(rowid <= upto_id)
        .limit(FEW_TEXT_MATCHES + 1)
        .subquery()
    )
    count = (await session.execute(select(func.count()).select_from(matches))).scalar_one()
    return int(count) <= FEW_TEXT_MATCHES


async def query_events_after(
    session: AsyncSession, f: EventFilter, after_id: int, upto_id: int, limit: int
) -> list[StoredEvent]:
    """Events matching ``f`` with ``after_id < id <= upto_id``, oldest first, at most ``limit``
    (the live stream's read: ascending, so advancing the cursor never skips a row).
    ``f.before_id`` / ``f.after_id`` / ``f.limit`` are ignored. A range of at most
    :data:`PLAIN_WINDOW` ids (a stream's usual read) is scanned plainly, a wider one through
    the search index."""
    f = replace(f, before_id=None, after_id=None)
    hosts = await _agents_by_hostname(session, f.text) if f.text else []
    indexed = upto_id - after_id > PLAIN_WINDOW
    where = _conditions(f, _dialect(session), hosts, indexed)
    return await _fetch(
        session, [*where, UpdateEvent.id > after_id, UpdateEvent.id <= upto_id], limit, False
    )


async def max_event_id(session: AsyncSession) -> int:
    """The highest History id, 0 when there are no events (the live stream's horizon)."""
    value = (await session.execute(select(func.max(UpdateEvent.id)))).scalar_one()
    return 0 if value is None else int(value)


async def list_agents(session: AsyncSession, limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` agents as ``(id, hostname)``, ordered by hostname then id (a form's
    agent list)."""
    result = await session.execute(
        select(Agent.id, Agent.hostname).order_by(Agent.hostname, Agent.id).limit(limit)
    )
    return [(row.id, row.hostname) for row in result]


async def hostnames(session: AsyncSession, agent_ids: Sequence[str]) -> dict[str, str]:
    """``agent id -> hostname`` for those of ``agent_ids`` that exist."""
    if not agent_ids:
        return {}
    result = await session.execute(
        select(Agent.id, Agent.hostname).where(Agent.id.in_(list(agent_ids)))
    )
    return {row.id: row.hostname for row in result}
