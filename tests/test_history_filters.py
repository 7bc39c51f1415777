"""Every History filter combination returns exactly the rows it names, on SQLite and
PostgreSQL, and the combinations that used to walk the whole History are served by their
indexes (alembic 0013's time-window indexes, one agent through ``(agent_id, id)``).

A few thousand events are seeded over several agents, severities, outcomes and 30 days, with
late arrivals (an event that occurred long before it was stored, so ``occurred_at`` is not in
id order). Each combination is read page by page through the keyset cursor and compared with a
Python filter over the seeded rows.
"""

from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from server_testlib import every_event_id, sqlite_page_plan
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.domain import EventFilter, EventStatus, EventType, Severity, outcome_name
from server.storage import history
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.storage.models import Agent, UpdateEvent

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EVENTS = 2400
DAYS = 30
AGENTS = 6
# (event_type, status, severity): the outcomes a fleet reports
KINDS = (
    (EventType.MIGRATION_EXECUTION, EventStatus.SUCCESS, Severity.SUCCESS),
    (EventType.MIGRATION_EXECUTION, EventStatus.FAILED, Severity.ERROR),
    (EventType.MIGRATION_EXECUTION, EventStatus.PARTIAL, Severity.WARNING),
    (EventType.MIGRATION_DETECTION, EventStatus.NOT_NEEDED, Severity.INFO),
    (EventType.MIGRATION_DETECTION, EventStatus.FAILED, Severity.ERROR),
)


@dataclass(frozen=True)
class Seeded:
    id: int
    agent_id: str
    event_type: str
    status: str
    severity: str
    occurred_at: datetime


async def seed(sessions: async_sessionmaker[AsyncSession]) -> tuple[list[str], list[Seeded]]:
    rnd = random.Random(13)
    agents = [str(uuid.uuid4()) for _ in range(AGENTS)]
    start = NOW - timedelta(days=DAYS)
    rows = []
    for i in range(EVENTS):
        event_type, status, severity = rnd.choice(KINDS)
        occurred = start + timedelta(days=DAYS) * i / EVENTS
        if i % 40 == 0:  # a late arrival: stored now, occurred days ago
            occurred -= timedelta(days=rnd.randint(1, 12), minutes=rnd.randint(0, 900))
        rows.append(
            {
                "event_id": str(uuid.uuid4()),
                "agent_id": agents[rnd.randrange(AGENTS)],
                "category": "migration",
                "event_type": event_type.value,
                "status": status.value,
                "severity": severity.value,
                "message": f"event {i}",
                "error_message": "",
                "occurred_at": occurred,
                "received_at": NOW,
            }
        )
    async with sessions() as session, session.begin():
        await session.execute(
            insert(Agent),
            [{"id": a, "hostname": f"host-{n}", "enrolled_at": NOW} for n, a in enumerate(agents)],
        )
        await session.execute(insert(UpdateEvent), rows)
    async with sessions() as session:
        result = await session.execute(
            text("SELECT id, agent_id, event_type, status, severity FROM update_events ORDER BY id")
        )
        stored = list(result)
    # the seeded times (the database returns them in its own encoding; ids follow insertion)
    return agents, [
        Seeded(r[0], r[1], r[2], r[3], r[4], row["occurred_at"])
        for r, row in zip(stored, rows, strict=True)
    ]


def expected(rows: list[Seeded], f: EventFilter) -> list[int]:
    outcomes = {(t.value, s.value) for t, s, _ in KINDS if outcome_name(t, s) in f.event_types}
    return sorted(
        (
            r.id
            for r in rows
            if (not f.severities or r.severity in {s.value for s in f.severities})
            and (not outcomes or (r.event_type, r.status) in outcomes)
            and (f.agent_id is None or r.agent_id == f.agent_id)
            and (f.since is None or r.occurred_at >= f.since)
            and (f.until is None or r.occurred_at <= f.until)
        ),
        reverse=True,
    )


def windows() -> list[tuple[datetime | None, datetime | None]]:
    day = NOW - timedelta(days=20)
    return [
        (None, None),
        (day, day + timedelta(days=1)),  # one day 20 days ago (late arrivals land here too)
        (NOW - timedelta(hours=30), None),  # the last 30 hours
        (None, NOW - timedelta(days=25)),  # everything before 25 days ago
    ]


async def test_every_combination_returns_exactly_its_rows(engine: AsyncEngine) -> None:
    sessions = make_sessionmaker(engine)
    agents, rows = await seed(sessions)
    severity_choices: list[tuple[Severity, ...]] = [
        (),
        (Severity.ERROR,),
        (Severity.WARNING, Severity.INFO),
    ]
    outcome_choices: list[tuple[str, ...]] = [
        (),
        (outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.FAILED),),
        (
            outcome_name(EventType.MIGRATION_DETECTION, EventStatus.FAILED),
            outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.PARTIAL),
        ),
    ]
    checked = 0
    for severities, outcomes, agent, (since, until) in itertools.product(
        severity_choices, outcome_choices, [None, agents[2]], windows()
    ):
        f = EventFilter(
            severities=severities,
            event_types=outcomes,
            agent_id=agent,
            since=since,
            until=until,
            limit=37,
        )
        want = expected(rows, f)
        assert await every_event_id(sessions, f) == want, f
        checked += bool(want)
    assert checked > 40  # most combinations select something (the comparison is not vacuous)


@pytest.mark.parametrize(
    ("f", "index"),
    [
        (
            EventFilter(
                severities=(Severity.ERROR,),
                since=NOW - timedelta(days=20),
                until=NOW - timedelta(days=19),
            ),
            "ix_update_events_severity_occurred_at",
        ),
        (
            EventFilter(
                event_types=(outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.FAILED),),
                since=NOW - timedelta(days=20),
                until=NOW - timedelta(days=19),
            ),
            "ix_update_events_event_type_status_occurred_at",
        ),
        (
            # The History page's first page: bounded by the live stream's horizon.
            EventFilter(
                severities=(Severity.ERROR,),
                since=NOW - timedelta(days=20),
                until=NOW - timedelta(days=19),
                before_id=10**9,
            ),
            "ix_update_events_severity_occurred_at",
        ),
        (
            EventFilter(
                event_types=(outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.FAILED),),
                since=NOW - timedelta(days=20),
                until=NOW - timedelta(days=19),
                before_id=10**9,
            ),
            "ix_update_events_event_type_status_occurred_at",
        ),
        (
            EventFilter(agent_id="an-agent", severities=(Severity.ERROR,)),
            "ix_update_events_agent_id_id",
        ),
        (
            EventFilter(
                agent_id="an-agent",
                event_types=(outcome_name(EventType.MIGRATION_EXECUTION, EventStatus.FAILED),),
                since=NOW - timedelta(days=20),
            ),
            "ix_update_events_agent_id_id",
        ),
    ],
    ids=[
        "severity-in-window",
        "outcome-in-window",
        "severity-in-window-below-a-cursor",
        "outcome-in-window-below-a-cursor",
        "agent-and-severity",
        "agent-outcome-since",
    ],
)
async def test_sqlite_plans_use_the_narrow_index(
    sqlite_db_url: str, f: EventFilter, index: str
) -> None:
    """SQLite keeps no statistics (nothing runs ANALYZE): without 0013's indexes, the agent
    rule or the past-window cursor rule in ``storage.history._conditions`` these plans walk
    ``(severity, id)`` or ``(event_type, id)`` through most of the History."""
    engine = create_engine_for_url(sqlite_db_url)
    try:
        await seed(make_sessionmaker(engine))
        plan = await sqlite_page_plan(engine, f)
    finally:
        await engine.dispose()
    assert f"INDEX {index} " in plan, plan
    # A window's page is picked from the index alone (every index holds the rowid): only the
    # page's rows are read, not the whole window's (storage.history.page_query).
    assert (f"USING COVERING INDEX {index} " in plan) is index.endswith("occurred_at"), plan


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_postgresql_picks_a_past_window_page_in_the_index(db_url: str) -> None:
    """A window further back than it is long: the page's ids come from an index-only scan of
    a window index (they include the id, alembic 0016) sorted by ``id + 0``; without the rule
    PostgreSQL walks the primary key from the newest row (storage.history.page_query)."""
    f = EventFilter(
        severities=(Severity.ERROR,), since=NOW - timedelta(days=20), until=NOW - timedelta(days=19)
    )
    assert history.is_past_window(f, NOW)
    assert not history.is_past_window(replace(f, until=None), NOW)  # reaches the newest rows
    assert not history.is_past_window(replace(f, agent_id="an-agent"), NOW)
    assert not history.is_past_window(replace(f, since=NOW - timedelta(days=60)), NOW)
    engine = create_engine_for_url(db_url)
    try:
        await seed(make_sessionmaker(engine))
        where = history._conditions(f, "postgresql")
        stmt = history.page_query("postgresql", where, 51, True, past_window=True)
        compiled = stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
        async with engine.connect() as conn:  # as autovacuum would: the visibility map is set
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM ANALYZE update_events")
        async with engine.begin() as conn:
            # The seed is small: make the planner show which index it can answer from.
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            await conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            plan = " | ".join(str(r[0]) for r in await conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    finally:
        await engine.dispose()
    assert "Index Only Scan using ix_update_events_severity_occurred_at" in plan, plan
