"""The History's indexed free-text search (alembic 0011) returns exactly what the plain
case-insensitive substring scan returns, on SQLite (FTS5 trigram) and PostgreSQL (pg_trgm).

A few thousand varied events are seeded; every query's ids (with and without a severity filter,
read page by page through the keyset cursor) must equal a Python substring filter over the
seeded rows (case folded as the database folds: ASCII only on SQLite, every letter on
PostgreSQL). Retention's deletes leave the search. The query plans prove the index applies.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from server_testlib import every_event_id, sqlite_page_plan
from sqlalchemy import delete, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler

from server.domain import EventFilter, Severity
from server.storage import history, retention, search
from server.storage.db import make_sessionmaker
from server.storage.models import Agent, UpdateEvent

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EVENTS = 3000
SEVERITIES = ("success", "info", "error", "warning")
HOSTNAMES = [f"web-{i:02d}.Prod.Example" for i in range(8)] + ["DB-Main", "cache_1", "Ünïcode-host"]
WORDS = [
    "migration",
    "Applied",
    "config",
    "VERSION",
    "rollback",
    "disk full",
    "50% done",
    "under_score",
    'say "hi"',
    "it's",
    "back\\slash",
    "sl/ash",
    "Ünïcode",
    "Straße",
    "ΣΊΣΥΦΟΣ",
    "日本語テキスト",
    "naïve café",
    "a",
    "Zebrafish",
    "x_y%z",
    "--",
]
QUERIES = [
    "a",
    "A",
    "e",
    "%",
    "_",
    "/",
    "ab",
    "%d",
    "r_",
    "\\",
    '"',
    "ig",
    "migration",
    "MIGRATION",
    "ration app",
    "zebrafish",
    "ZEBRA",
    "disk full",
    "50% done",
    "0% d",
    "under_score",
    "r_s",
    'say "hi"',
    '"hi"',
    "it's",
    "back\\slash",
    "sl/ash",
    "ünïcode",
    "Ünïcode",
    "straße",
    "STRASSE",
    "σίσυφος",
    "日本語",
    "naïve",
    "x_y%z",
    "prod.example",
    "web-03",
    "db-main",
    "cache_1",
    "nothing-matches-this",
    "---",
    "  ",
    # hex digits and dashes only: could be part of an id (ids are not in the trigram index)
    "abc",
    "Dead",
    "4a-",
    "-4",
]


@dataclass(frozen=True)
class Seeded:
    id: int
    severity: str
    fields: tuple[str, ...]  # message, error message, event id, run id, hostname


def _fold(value: str, ascii_only: bool) -> str:
    """SQLite's ``lower()``: ASCII only. PostgreSQL's ILIKE: each character lowered on its
    own (no final-sigma rule, unlike ``str.lower``)."""
    if ascii_only:
        return value.translate(history._ASCII_LOWER)
    return "".join(c.lower() for c in value)


def expected(rows: list[Seeded], q: str, ascii_only: bool, severity: str | None) -> list[int]:
    needle = _fold(q, ascii_only)
    return sorted(
        (
            r.id
            for r in rows
            if (severity is None or r.severity == severity)
            and any(needle in _fold(v, ascii_only) for v in r.fields)
        ),
        reverse=True,
    )


async def seed(sessions: async_sessionmaker[AsyncSession]) -> list[Seeded]:
    rnd = random.Random(16)
    agents = [(str(uuid.uuid4()), h) for h in HOSTNAMES]
    events = []
    for i in range(EVENTS):
        agent_id, _ = agents[i % len(agents)]
        message = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(0, 4)))
        error = rnd.choice(WORDS) if i % 5 == 0 else ""
        events.append(
            {
                "event_id": str(uuid.uuid4()).upper() if i % 7 == 0 else str(uuid.uuid4()),
                "agent_id": agent_id,
                "category": "migration",
                "event_type": "migration_execution",
                "status": "success",
                "severity": SEVERITIES[i % 4],
                "message": message,
                "error_message": error,
                "run_id": str(uuid.uuid4()) if i % 3 == 0 else None,
                "occurred_at": NOW - timedelta(minutes=EVENTS - i),
                "received_at": NOW,
            }
        )
    async with sessions() as session, session.begin():
        await session.execute(
            insert(Agent), [{"id": a, "hostname": h, "enrolled_at": NOW} for a, h in agents]
        )
        await session.execute(insert(UpdateEvent), events)
    host = dict(agents)
    async with sessions() as session:
        result = await session.execute(
            text(
                "SELECT id, severity, message, error_message, event_id, run_id, agent_id "
                "FROM update_events ORDER BY id"
            )
        )
        return [Seeded(r[0], r[1], (r[2], r[3], r[4], r[5] or "", host[r[6]])) for r in result]


async def search_ids(
    sessions: async_sessionmaker[AsyncSession], q: str, severity: str | None, limit: int
) -> list[int]:
    """Every id the History returns for ``q``, page by page through the cursor."""
    severities = (Severity(severity),) if severity else ()
    return await every_event_id(sessions, EventFilter(text=q, severities=severities, limit=limit))


@pytest.mark.parametrize(("window", "few"), [(0, 5), (700, history.FEW_TEXT_MATCHES)])
async def test_indexed_search_equals_substring_scan(
    engine: AsyncEngine, window: int, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``window``: how many of the newest ids are scanned plainly before the index serves the
    rest (0: the index alone; 700: a page often straddles the two). ``few``: up to how many
    index entries make SQLite read a text's rows from the index first (5: most of the queries
    have more; the product's value: most have fewer)."""
    monkeypatch.setattr(history, "PLAIN_WINDOW", window)
    monkeypatch.setattr(history, "FEW_TEXT_MATCHES", few)
    sessions = make_sessionmaker(engine)
    rows = await seed(sessions)
    ascii_only = engine.dialect.name == "sqlite"
    nonempty = 0
    for q in QUERIES:
        want = expected(rows, q, ascii_only, None)
        nonempty += bool(want)
        assert await search_ids(sessions, q, None, 500) == want, q
        want_errors = expected(rows, q, ascii_only, "error")
        assert await search_ids(sessions, q, "error", 37) == want_errors, q
    assert nonempty > len(QUERIES) * 2 // 3  # the queries do find things

    # An event id and a run id, any case, whole or in part.
    some = rows[77]
    for q in (some.fields[2], some.fields[2].swapcase(), some.fields[2][5:20]):
        assert await search_ids(sessions, q, None, 50) == expected(rows, q, ascii_only, None)


async def test_deleted_events_leave_the_search(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "PLAIN_WINDOW", 0)  # the index alone
    sessions = make_sessionmaker(engine)
    rows = await seed(sessions)
    ascii_only = engine.dialect.name == "sqlite"
    before = await search_ids(sessions, "zebrafish", None, 1000)
    assert before == expected(rows, "zebrafish", ascii_only, None) and before
    cutoff = NOW - timedelta(minutes=EVENTS // 2)
    async with sessions() as session, session.begin():
        deleted = await retention.delete_events_before(session, cutoff, EVENTS)
    assert deleted > 0
    survivors = rows[-(len(rows) - deleted) :]
    assert await search_ids(sessions, "zebrafish", None, 1000) == expected(
        survivors, "zebrafish", ascii_only, None
    )
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            # The index itself holds no deleted row (not just filtered out by the join).
            found = (
                await conn.execute(
                    text(
                        f"SELECT count(*) FROM {search.FTS_TABLE} WHERE {search.FTS_TABLE} MATCH :q"
                    ),
                    {"q": search.match_phrase("zebrafish")},
                )
            ).scalar_one()
        assert found == len(expected(survivors, "zebrafish", ascii_only, None))
    async with sessions() as session, session.begin():
        await session.execute(delete(UpdateEvent))
    assert await search_ids(sessions, "zebrafish", None, 1000) == []


async def test_plan_uses_the_index(engine: AsyncEngine) -> None:
    sessions = make_sessionmaker(engine)
    await seed(sessions)
    dialect = engine.dialect
    f = EventFilter(text="zebrafish")
    stmt = (
        history._select_events()
        .where(*history._conditions(f, dialect.name))
        .order_by(UpdateEvent.id.desc())
        .limit(51)
    )
    compiled: SQLCompiler = stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    async with engine.connect() as conn:
        if dialect.name == "sqlite":
            plan = " | ".join(
                str(r[-1]) for r in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
            assert f"{search.FTS_TABLE} VIRTUAL TABLE INDEX" in plan, plan
        else:
            await conn.exec_driver_sql("ANALYZE update_events")
            # On a few thousand rows, scanning the primary key backwards for 51 rows is as
            # cheap: rule out the plain scans to prove the index can serve the condition (the
            # benchmark shows the planner choosing it on a large History).
            await conn.exec_driver_sql("SET enable_seqscan = off")
            await conn.exec_driver_sql("SET enable_indexscan = off")
            plan = " | ".join(str(r[0]) for r in await conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            assert search.PG_INDEX in plan, plan


async def test_sqlite_reads_a_rare_texts_rows_from_the_index(
    sqlite_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rare text with another filter: SQLite reads the rows the search index lists; without
    ``storage.history._few_text_matches`` it walks the severity's index below the cursor,
    checking every error against the index's list (100 ms at 10M events)."""
    from server.storage.db import create_engine_for_url

    monkeypatch.setattr(history, "PLAIN_WINDOW", 0)  # straight to the index
    engine = create_engine_for_url(sqlite_db_url)
    try:
        sessions = make_sessionmaker(engine)
        await seed(sessions)
        async with sessions() as session:
            assert await history._few_text_matches(session, "zebrafish", [], EVENTS)
            assert not await history._few_text_matches(session, "zebrafish", ["an-agent"], EVENTS)
            assert not await history._few_text_matches(session, "abc-12", [], EVENTS)
        f = EventFilter(text="zebrafish", severities=(Severity.ERROR,))
        plan = await sqlite_page_plan(engine, f)
        monkeypatch.setattr(history, "FEW_TEXT_MATCHES", 0)  # as if the text were common
        common = await sqlite_page_plan(engine, f)
    finally:
        await engine.dispose()
    assert "severity" not in plan and f"{search.FTS_TABLE} VIRTUAL TABLE INDEX" in plan, plan
    assert "severity" in common, common  # what the rule keeps the planner from


async def test_live_stream_reads_match_the_page(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live stream's ascending range reads (plain for a short range, indexed for a wide
    one) return the same rows as the page query."""
    sessions = make_sessionmaker(engine)
    rows = await seed(sessions)
    ascii_only = engine.dialect.name == "sqlite"
    top = rows[-1].id
    for window in (10**9, 0):
        monkeypatch.setattr(history, "PLAIN_WINDOW", window)
        for q in ("zebrafish", "MIGRATION", "web-03", "r_s"):
            async with sessions() as session:
                got = await history.query_events_after(
                    session, EventFilter(text=q), rows[100].id, top, 10**6
                )
            want = [i for i in reversed(expected(rows, q, ascii_only, None)) if i > rows[100].id]
            assert [e.id for e in got] == want, (q, window)


async def test_short_text_is_not_sent_to_the_index(engine: AsyncEngine) -> None:
    """1-2 characters have no trigram: the plain scan (still the same results, above)."""
    for q in ("a", "ab"):
        where = history._text_condition(q, engine.dialect.name, ["some-agent"])
        sql = str(where.compile(dialect=engine.dialect))
        assert search.FTS_TABLE not in sql and "coalesce" not in sql
