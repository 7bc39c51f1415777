"""alembic: one head, upgrade / downgrade / upgrade, and models == migrations, on both databases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from server.errors import SchemaOutOfDate
from server.storage import schema, search
from server.storage.db import create_engine_for_url
from server.storage.models import Base

TABLES_0001 = {"agents", "enrollment_tokens", "agent_credentials", "update_events"}
TABLES_0003 = {"web_users", "web_sessions", "server_keys"}
TABLES_0004 = {"run_inputs"}
TABLES_0006 = {"health_probe"}
TABLES_0007 = {"migration_specs", "agent_spec_versions"}
TABLES_0008 = {"agent_tags"}
TABLES_0009 = {"rollouts", "rollout_hosts", "rollout_transitions"}
TABLES_0010 = {"webhooks", "webhook_deliveries"}
TABLES_0015 = {"auth_changes"}
# SQLite only: the History search's FTS5 table and its shadow tables (PostgreSQL: an index).
TABLES_0011_SQLITE = {
    "update_events_search",
    "update_events_search_config",
    "update_events_search_data",
    "update_events_search_idx",
}
TABLES = (
    TABLES_0001
    | {"migration_runs", "run_steps", "task_logs", "pending_actions"}
    | TABLES_0003
    | TABLES_0004
    | TABLES_0006
    | TABLES_0007
    | TABLES_0008
    | TABLES_0009
    | TABLES_0010
    | TABLES_0015
)


def test_single_head() -> None:
    script = ScriptDirectory.from_config(schema.alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1
    assert schema.head_revision() == heads[0]


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": search.include_name}
    )
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def _expected_tables(url: str) -> set[str]:
    return TABLES | (TABLES_0011_SQLITE if url.startswith("sqlite") else set())


async def _inspect(url: str) -> tuple[list[object], set[str]]:
    engine = create_engine_for_url(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_diff), await conn.run_sync(_tables)
    finally:
        await engine.dispose()


async def _insert_agent(url: str) -> None:
    engine = create_engine_for_url(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO agents (id, hostname, machine_id, os, kernel, agent_version, "
                    "config_version, disk_free_bytes, facts, enrolled_at, "
                    "checkin_interval_seconds, revoked) VALUES (:id, 'h', '', '', '', '', '', 0, "
                    "'{}', :now, 60, false)"
                ),
                {"id": str(uuid.uuid4()), "now": datetime.now(UTC)},
            )
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_matches_models(empty_any_db_url: str) -> None:
    url = empty_any_db_url
    engine = create_engine_for_url(url)
    try:
        with pytest.raises(SchemaOutOfDate, match="flagpost-server db upgrade"):
            await schema.assert_schema_current(engine)
    finally:
        await engine.dispose()
    assert schema.current_revision(url) is None

    # Called synchronously from inside a running event loop: must still work.
    schema.upgrade(url)
    assert schema.current_revision(url) == schema.head_revision()
    diff, tables = await _inspect(url)
    assert diff == [], f"models and migrations differ: {diff}"
    assert tables == _expected_tables(url)
    engine = create_engine_for_url(url)
    try:
        await schema.assert_schema_current(engine)
    finally:
        await engine.dispose()
    # alembic's own "check" (autogenerate finds nothing to do) agrees.
    await asyncio.to_thread(command.check, schema.alembic_config(url))

    await _insert_agent(url)  # downgrade with data in the tables
    await asyncio.to_thread(schema.downgrade, url, "base")
    assert schema.current_revision(url) is None
    _, tables = await _inspect(url)
    assert tables == set()

    await asyncio.to_thread(schema.upgrade, url)
    diff, tables = await _inspect(url)
    assert diff == [] and tables == _expected_tables(url)
    assert schema.current_revision(url) == schema.head_revision()


async def test_schema_behind_or_unknown_is_refused(empty_db_url: str) -> None:
    url = empty_db_url
    schema.upgrade(url)
    engine = create_engine_for_url(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
        with pytest.raises(SchemaOutOfDate, match="unknown to this version"):
            await schema.assert_schema_current(engine)
    finally:
        await engine.dispose()


def test_sqlite_connections_get_wal_and_foreign_keys(empty_db_url: str) -> None:
    async def pragmas() -> tuple[str, int, int, int]:
        engine = create_engine_for_url(empty_db_url)
        try:
            async with engine.connect() as conn:
                mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
                sync = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
                fks = (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one()
                busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
                return str(mode), int(sync), int(fks), int(busy)
        finally:
            await engine.dispose()

    mode, sync, fks, busy = asyncio.run(pragmas())
    assert mode == "wal"
    assert sync == 2  # FULL
    assert fks == 1
    assert busy > 0
