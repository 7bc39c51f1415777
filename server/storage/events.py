"""Writes to ``update_events`` (the History). Reads live in ``server.storage.history``.

The ingest hot path stays off the ORM: each check-in's events are encoded once into plain
driver-ready tuples (``encode_events``; JSON serialised, timestamps in the dialect's storage
form, the same form SQLAlchemy's types write and read back), and ``insert_rows`` sends them as
driver-level SQL with ``ON CONFLICT (agent_id, event_id) DO NOTHING RETURNING`` (an event id is
unique per agent: one agent cannot pre-claim another's):

- SQLite: multi-row ``VALUES`` statements in a few fixed chunk sizes (powers of 4 up to 1024
  rows), so the handful of distinct statements stay in the driver's statement cache;
- PostgreSQL: one statement per batch, whatever its size, with one array per column
  (``INSERT … SELECT * FROM unnest($1::varchar[], …)``), prepared once per connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from server.domain import FileDiff, NewEvent
from server.storage.bulk import BulkInsert

Row = tuple[Any, ...]

COLUMNS = (
    "event_id",
    "agent_id",
    "category",
    "event_type",
    "status",
    "severity",
    "message",
    "error_message",
    "error_detail",
    "migration_from",
    "migration_to",
    "run_id",
    "system_info",
    "occurred_at",
    "received_at",
    "spec_id",
    "spec_revision",
    "action_id",
    "diffs",
)
_PG_TYPES = (
    "varchar",
    "varchar",
    "varchar",
    "varchar",
    "varchar",
    "varchar",
    "text",
    "text",
    "jsonb",
    "varchar",
    "varchar",
    "varchar",
    "jsonb",
    "timestamptz",
    "timestamptz",
    "varchar",
    "int4",
    "varchar",
    "text",
)
_EMPTY_JSON = "{}"


def _make_json_encoder() -> Callable[[dict[str, Any]], str]:
    """Compact JSON for flat dicts of str/int; the C encoder called directly when available
    (skips ``JSONEncoder.encode``'s Python layers: ~35% faster per event)."""
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C accelerator
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    encoder = c_make_encoder(
        None, None, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    return lambda value: "".join(encoder(value, 0))


_json = _make_json_encoder()


def json_text(value: dict[str, Any]) -> str:
    """Compact JSON of a flat dict, the way the hot insert paths store JSON columns."""
    return _json(value) if value else _EMPTY_JSON


def sqlite_timestamp(value: datetime) -> str:
    """A UTC timestamp as SQLAlchemy stores it on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _as_is(value: datetime) -> datetime:
    return value  # asyncpg binds aware datetimes to timestamptz itself


def _timestamp_encoder(dialect: str) -> Callable[[datetime], Any]:
    if dialect == "sqlite":
        return sqlite_timestamp
    if dialect == "postgresql":
        return _as_is
    raise RuntimeError(f"unsupported database dialect {dialect!r}")  # pragma: no cover


def diffs_text(diffs: Sequence[FileDiff]) -> str | None:
    """The stored form of a preview's diffs (``update_events.diffs``): a JSON list, or NULL."""
    if not diffs:
        return None
    return json.dumps([d.to_json() for d in diffs], ensure_ascii=False, separators=(",", ":"))


def diffs_from_text(text: str | None) -> tuple[FileDiff, ...]:
    """Inverse of :func:`diffs_text` (NULL or unreadable: no diffs)."""
    if not text:
        return ()
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    return tuple(FileDiff.from_json(item) for item in items if isinstance(item, dict))


def encode_events(events: Sequence[NewEvent], received_at: datetime, dialect: str) -> list[Row]:
    """Driver-ready rows (``COLUMNS`` order) for ``insert_rows`` on ``dialect``."""
    timestamp = _timestamp_encoder(dialect)
    received = timestamp(received_at)
    return [
        (
            e.event_id,
            e.agent_id,
            e.category,  # StrEnum members are str: drivers bind them as their value
            e.event_type,
            e.status,
            e.severity,
            e.message,
            e.error_message,
            json_text(e.error_detail),
            e.migration_from,
            e.migration_to,
            e.run_id,
            json_text(e.system_info),
            timestamp(e.occurred_at),
            received,
            e.spec_id,
            e.spec_revision,
            e.action_id,
            diffs_text(e.diffs) if e.diffs else None,
        )
        for e in events
    ]


Inserted = tuple[int, str, str]  # (update_events.id, agent_id, event_id) of one new row

_EVENTS = BulkInsert(
    "update_events",
    COLUMNS,
    _PG_TYPES,
    conflict="agent_id, event_id",
    returning="id, agent_id, event_id",
)


def _returned(rows: Sequence[Any]) -> list[Inserted]:
    return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]


async def insert_rows(conn: AsyncConnection, rows: Sequence[Row]) -> list[Inserted]:
    """Insert encoded ``rows`` in the connection's transaction, skipping any whose ``event_id``
    its agent already stored. Returns ``(id, agent_id, event_id)`` of every row inserted."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        columns = [list(column) for column in zip(*rows, strict=True)]
        result = await conn.exec_driver_sql(_EVENTS.postgresql, tuple(columns))
        return _returned(result.fetchall())
    inserted: list[Inserted] = []
    for sql, params in _EVENTS.sqlite_statements(rows):
        result = await conn.exec_driver_sql(sql, params)
        inserted.extend(_returned(result.fetchall()))
    return inserted


def insert_rows_sync(conn: Connection, rows: Sequence[Row]) -> list[Inserted]:
    """``insert_rows`` for SQLite on a synchronous connection (the SQLite writer thread)."""
    inserted: list[Inserted] = []
    for sql, params in _EVENTS.sqlite_statements(rows):
        inserted.extend(_returned(conn.exec_driver_sql(sql, params).fetchall()))
    return inserted


async def insert_events(
    session: AsyncSession, events: Sequence[NewEvent], received_at: datetime
) -> int:
    """Insert ``events`` in the session's transaction, skipping any whose ``event_id`` its agent
    already stored (``ON CONFLICT (agent_id, event_id) DO NOTHING``). Returns the number of
    rows actually inserted."""
    return len(await insert_events_returning_ids(session, events, received_at))


async def insert_events_returning_ids(
    session: AsyncSession, events: Sequence[NewEvent], received_at: datetime
) -> set[tuple[str, str]]:
    """Like ``insert_events`` but returns ``(agent_id, event_id)`` of every row inserted."""
    if not events:
        return set()
    conn = await session.connection()
    rows = encode_events(events, received_at, conn.dialect.name)
    return {(agent_id, event_id) for _, agent_id, event_id in await insert_rows(conn, rows)}


async def count_events(conn: AsyncConnection) -> int:
    """How many events are stored (a full count: for benchmarks and tests, not hot paths)."""
    result = await conn.exec_driver_sql("SELECT count(*) FROM update_events")
    return int(result.scalar_one())
