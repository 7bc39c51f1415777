"""SQL for target selection (``server.selectors``) and server-side agent tags.

A selector becomes one WHERE clause over ``agents``: labels are read from the JSON column with
a JSON path (``json_extract`` on SQLite, ``->>`` on PostgreSQL), tags with EXISTS on
``agent_tags``, hostname globs with LIKE, health with the last check-in against a cutoff.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    cast,
    delete,
    false,
    func,
    insert,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from server.selectors import HealthFilter, HostTerm, LabelTerm, PresenceTerm, Selector, Term
from server.storage.models import Agent, AgentTag

_CHUNK = 500


def _tag_exists(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return select(AgentTag.agent_id).where(AgentTag.agent_id == Agent.id, condition).exists()


def _label(key: str) -> ColumnElement[str]:
    label: ColumnElement[str] = Agent.labels[key].as_string()
    return label


def _escaped(text: str) -> str:
    """``text`` lower-cased with LIKE's wildcards escaped (escape character ``\\``)."""
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like(glob: str) -> str:
    return _escaped(glob).replace("*", "%").replace("?", "_")


def contains_pattern(text: str) -> str:
    """A LIKE pattern (escape ``\\``) matching anything that contains ``text``, lower-cased."""
    return f"%{_escaped(text)}%"


def _positive(term: Term) -> ColumnElement[bool]:
    if isinstance(term, LabelTerm):
        label = _label(term.key)
        return or_(
            and_(label.is_not(None), label.in_(term.values)),
            _tag_exists(AgentTag.tag.in_([f"{term.key}={value}" for value in term.values])),
        )
    if isinstance(term, PresenceTerm):
        return or_(
            _label(term.name).is_not(None),
            _tag_exists(
                or_(
                    AgentTag.tag == term.name,
                    AgentTag.tag.startswith(term.name + "=", autoescape=True),
                )
            ),
        )
    if isinstance(term, HostTerm):
        hostname = func.lower(Agent.hostname)
        return or_(*(hostname.like(_like(glob), escape="\\") for glob in term.patterns))
    return Agent.id.in_(term.ids)


def label_is(key: str, value: str) -> ColumnElement[bool]:
    """Label ``key`` is ``value``, or tag ``key=value`` is set (as the selector reads them)."""
    return _positive(LabelTerm(key, (value,)))


def contains(column: ColumnElement[str], text: str, dialect: str) -> ColumnElement[bool]:
    """``column`` contains ``text``, any case: SQLite's LIKE already ignores ASCII case (no
    ``lower()`` per row), PostgreSQL's ILIKE."""
    pattern = contains_pattern(text)
    if dialect == "sqlite":
        return column.like(pattern, escape="\\")
    return column.ilike(pattern, escape="\\")


def labels_or_tags_contain(text: str, dialect: str) -> ColumnElement[bool]:
    """Some label key or value, or some tag, contains ``text`` (any case)."""
    tagged = select(AgentTag.agent_id).where(contains(AgentTag.tag.expression, text, dialect))
    return or_(contains(cast(Agent.labels, String), text, dialect), Agent.id.in_(tagged))


def selector_where(selector: Selector, online_since: datetime) -> ColumnElement[bool]:
    """The WHERE clause of ``selector``; online means a check-in at or after ``online_since``."""
    clauses: list[ColumnElement[bool]] = [Agent.revoked == false()]
    online = and_(Agent.last_checkin_at.is_not(None), Agent.last_checkin_at >= online_since)
    if selector.health is HealthFilter.ONLINE:
        clauses.append(online)
    elif selector.health is HealthFilter.OFFLINE:
        clauses.append(not_(online))
    for term in selector.terms:
        positive = _positive(term)
        clauses.append(not_(positive) if term.negate else positive)
    return and_(true(), *clauses)


async def count_selected(session: AsyncSession, selector: Selector, online_since: datetime) -> int:
    """How many agents ``selector`` picks."""
    statement = (
        select(func.count()).select_from(Agent).where(selector_where(selector, online_since))
    )
    return int((await session.execute(statement)).scalar_one())


async def selected_agents(
    session: AsyncSession, selector: Selector, online_since: datetime, limit: int | None = None
) -> list[tuple[str, str]]:
    """``(id, hostname)`` of the agents ``selector`` picks, by hostname then id."""
    statement = (
        select(Agent.id, Agent.hostname)
        .where(selector_where(selector, online_since))
        .order_by(Agent.hostname, Agent.id)
    )
    if limit is not None:
        statement = statement.limit(limit)
    result = await session.execute(statement)
    return [(row.id, row.hostname) for row in result]


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def existing_agent_ids(session: AsyncSession, agent_ids: Sequence[str]) -> set[str]:
    """Which of ``agent_ids`` are agents."""
    found: set[str] = set()
    for chunk in _chunks(agent_ids):
        result = await session.execute(select(Agent.id).where(Agent.id.in_(chunk)))
        found.update(result.scalars())
    return found


async def tags_of(
    session: AsyncSession, agent_ids: Sequence[str] | None = None
) -> dict[str, tuple[str, ...]]:
    """``agent id -> sorted tags`` for ``agent_ids`` (None: every agent with a tag)."""
    tags: dict[str, list[str]] = {}
    statement = select(AgentTag.agent_id, AgentTag.tag).order_by(AgentTag.agent_id, AgentTag.tag)
    chunks: Iterable[Sequence[str] | None] = [None] if agent_ids is None else _chunks(agent_ids)
    for chunk in chunks:
        query = statement if chunk is None else statement.where(AgentTag.agent_id.in_(chunk))
        for row in await session.execute(query):
            tags.setdefault(row.agent_id, []).append(row.tag)
    return {agent_id: tuple(values) for agent_id, values in tags.items()}


async def change_tags(
    session: AsyncSession, agent_ids: Sequence[str], add: Sequence[str], remove: Sequence[str]
) -> int:
    """Add ``add`` and remove ``remove`` on every agent of ``agent_ids`` (existing agents);
    returns how many agents gained or lost at least one tag."""
    changed: set[str] = set()
    wanted = set(add)
    for chunk in _chunks(agent_ids):
        have: set[tuple[str, str]] = set()
        touched = sorted(wanted | set(remove))
        if touched:
            result = await session.execute(
                select(AgentTag.agent_id, AgentTag.tag).where(
                    AgentTag.agent_id.in_(chunk), AgentTag.tag.in_(touched)
                )
            )
            have = {(row.agent_id, row.tag) for row in result}
        rows = [
            {"agent_id": agent_id, "tag": tag}
            for agent_id in chunk
            for tag in sorted(wanted)
            if (agent_id, tag) not in have
        ]
        if rows:
            await session.execute(insert(AgentTag), rows)
            changed.update(row["agent_id"] for row in rows)
        gone = [(agent_id, tag) for agent_id, tag in have if tag in remove]
        if gone:
            await session.execute(
                delete(AgentTag).where(
                    AgentTag.agent_id.in_(chunk), AgentTag.tag.in_(sorted(set(remove)))
                )
            )
            changed.update(agent_id for agent_id, _ in gone)
    return len(changed)


async def revoked_among(session: AsyncSession, agent_ids: Sequence[str]) -> set[str]:
    """Which of ``agent_ids`` are revoked agents."""
    found: set[str] = set()
    for chunk in _chunks(agent_ids):
        result = await session.execute(
            select(Agent.id).where(Agent.id.in_(chunk), Agent.revoked == true())
        )
        found.update(result.scalars())
    return found
