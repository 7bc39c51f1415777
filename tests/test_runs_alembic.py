"""Revisions from 0002 on (runs, logs, actions, security, inputs) upgrade a database already
holding data and downgrade cleanly without losing a row, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from server.storage import schema, search
from server.storage.db import create_engine_for_url
from server.storage.models import Base

NEW_TABLES = {"migration_runs", "run_steps", "task_logs", "pending_actions"}


def _state(connection: Connection) -> tuple[set[str], list[object]]:
    tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": search.include_name}
    )
    return tables, list(compare_metadata(context, Base.metadata))


async def _run(url: str, statement: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_engine_for_url(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def _inspect(url: str) -> tuple[set[str], list[object]]:
    engine = create_engine_for_url(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_state)
    finally:
        await engine.dispose()


async def _insert_agent(url: str, agent_id: str, now: datetime) -> None:
    await _run(
        url,
        "INSERT INTO agents (id, hostname, machine_id, os, kernel, agent_version, config_version, "
        "disk_free_bytes, facts, enrolled_at, checkin_interval_seconds, revoked) VALUES "
        "(:id, 'h', '', '', '', '', '1', 0, '{}', :now, 60, false)",
        id=agent_id,
        now=now,
    )


async def _insert_event(url: str, agent_id: str, now: datetime) -> None:
    await _run(
        url,
        "INSERT INTO update_events (event_id, agent_id, category, event_type, status, "
        "severity, message, error_message, error_detail, migration_from, migration_to, "
        "system_info, occurred_at, received_at) VALUES (:e, :a, 'migration', "
        "'migration_detection', 'success', 'success', 'm', '', '{}', '1', '2', '{}', :now, :now)",
        e=str(uuid.uuid4()),
        a=agent_id,
        now=now,
    )


async def _insert_run_with_log(url: str, agent_id: str, run_id: str, now: datetime) -> None:
    await _run(
        url,
        "INSERT INTO migration_runs (id, agent_id, migration_id, state, steps_done, steps_total, "
        "migration_from, migration_to, error_message, created_at, updated_at) VALUES "
        "(:r, :a, 'agent-config', 'RUNNING', 0, 2, '1', '2', '', :now, :now)",
        r=run_id,
        a=agent_id,
        now=now,
    )
    await _run(
        url,
        "INSERT INTO task_logs (run_id, seq, timestamp, level, source, message, metadata_json) "
        "VALUES (:r, 1, :now, 'INFO', 'executor', 'hello', '{}')",
        r=run_id,
        now=now,
    )


async def test_0002_upgrades_a_database_holding_events(empty_any_db_url: str) -> None:
    url = empty_any_db_url
    await asyncio.to_thread(schema.upgrade, url, "0001")
    agent_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    await _insert_agent(url, agent_id, now)
    for _ in range(3):
        await _insert_event(url, agent_id, now)

    await asyncio.to_thread(schema.upgrade, url)
    tables, diff = await _inspect(url)
    assert tables >= NEW_TABLES and diff == []
    assert await _run(url, "SELECT count(*) FROM update_events") == [(3,)]
    run_id = str(uuid.uuid4())
    await _insert_run_with_log(url, agent_id, run_id, now)

    # Down with data in the new tables: they go, the History stays.
    await asyncio.to_thread(schema.downgrade, url, "0001")
    tables, _ = await _inspect(url)
    assert not NEW_TABLES & tables
    assert await _run(url, "SELECT count(*) FROM update_events") == [(3,)]

    await asyncio.to_thread(schema.upgrade, url)
    tables, diff = await _inspect(url)
    assert tables >= NEW_TABLES and diff == []
    assert schema.current_revision(url) == schema.head_revision()
    assert await _run(url, "SELECT count(*) FROM migration_runs") == [(0,)]


async def test_later_revisions_keep_every_row_going_down_and_up(empty_any_db_url: str) -> None:
    """0003 and 0004 alter tables that others reference with ON DELETE CASCADE: going down to
    0002 and back up must not lose an event, a run or a log line (a batch rebuild on SQLite
    would)."""
    url = empty_any_db_url
    await asyncio.to_thread(schema.upgrade, url, "0002")
    agent_id, run_id, now = str(uuid.uuid4()), str(uuid.uuid4()), datetime.now(UTC)
    await _insert_agent(url, agent_id, now)
    await _insert_event(url, agent_id, now)
    await _insert_run_with_log(url, agent_id, run_id, now)
    counts = "SELECT (SELECT count(*) FROM update_events), (SELECT count(*) FROM task_logs), "
    counts += "(SELECT count(*) FROM migration_runs), (SELECT count(*) FROM agents)"
    for target in ("head", "0002", "head"):
        if target == "0002":
            await asyncio.to_thread(schema.downgrade, url, target)
        else:
            await asyncio.to_thread(schema.upgrade, url)
        assert await _run(url, counts) == [(1, 1, 1, 1)], f"rows lost at {target}"
    _, diff = await _inspect(url)
    assert diff == []
