"""The ingest writer's transaction: a batch of events plus the agents' check-in updates, one
commit. Two implementations behind one interface (``BatchStore``):

- ``SqliteThreadStore`` (SQLite files): the whole transaction runs in ONE hop on a dedicated
  writer thread that holds ONE connection for its lifetime. One hop instead of one loop↔thread
  round trip per statement, and a page cache that stays warm (a connection's cache is dropped
  whenever another connection wrote, which pooled connections taking turns always did). The
  driver releases the GIL while SQLite works and fsyncs, so the event loop keeps serving.
- ``SessionStore`` (PostgreSQL, in-memory SQLite): the async engine's pooled sessions;
  asyncpg is natively asynchronous and sends a batch as one ``unnest`` statement. On PostgreSQL
  the transaction also takes the History write lock and queues the live-stream NOTIFY
  (``server.storage.notify``), so replicas see History ids in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.storage import agents as agents_db
from server.storage import events as events_db
from server.storage import notify, spec_versions
from server.storage.db import async_url, create_sync_sqlite_engine, sqlite_path
from server.storage.run_ingest import RunBatchResult, RunWork, apply_run_batch

Inserted = list[events_db.Inserted]  # (update_events.id, agent_id, event_id) of each new row


@dataclass(slots=True)
class StoreResult:
    """What one batch transaction stored."""

    inserted: Inserted  # History rows (the check-ins' events and any run-update notices)
    runs: RunBatchResult = field(default_factory=RunBatchResult)


class BatchStore(Protocol):
    """Stores one batch in one transaction; raises (nothing stored) on any failure."""

    async def store(
        self,
        rows: Sequence[events_db.Row],
        updates: Sequence[agents_db.CheckinUpdate],
        works: Sequence[RunWork] = (),
    ) -> StoreResult: ...

    async def close(self) -> None: ...


def _apply_works(conn: Connection, works: Sequence[RunWork], now: datetime) -> RunBatchResult:
    """The runs part and the spec versions of a batch's check-ins (one hop on PostgreSQL)."""
    if not works:
        return RunBatchResult()
    reports = spec_versions.reports_of([(w.agent_id, w.spec_versions) for w in works])
    if reports:
        spec_versions.record_spec_versions(conn, reports, now)
    return apply_run_batch(conn, works, now)


def _with_notices(
    rows: Sequence[events_db.Row], runs: RunBatchResult, now: datetime, dialect: str
) -> Sequence[events_db.Row]:
    """``rows`` plus the History notices the runs part produced (both stores insert both)."""
    if not runs.notices:
        return rows
    return [*rows, *events_db.encode_events(runs.notices, now, dialect)]


class SessionStore:
    """A batch per pooled async session (PostgreSQL; SQLite without a file)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def store(
        self,
        rows: Sequence[events_db.Row],
        updates: Sequence[agents_db.CheckinUpdate],
        works: Sequence[RunWork] = (),
    ) -> StoreResult:
        """Apply the runs part (``works``), insert ``rows`` and any run-update notices
        (duplicates skipped) and apply ``updates``, then commit."""
        async with self._sessions() as session, session.begin():
            conn = await session.connection()
            now = datetime.now(UTC)
            runs = await conn.run_sync(_apply_works, works, now) if works else RunBatchResult()
            rows = _with_notices(rows, runs, now, conn.dialect.name)
            if rows:  # History ids become visible in id order across replicas (PostgreSQL)
                await notify.lock_history_writes(session)
            inserted = await events_db.insert_rows(conn, rows)
            await agents_db.record_checkins(session, updates)
            if inserted:  # NOTIFY other replicas' live streams, delivered at COMMIT
                await notify.announce_history_commit(session, max(row[0] for row in inserted))
        return StoreResult(inserted, runs)

    async def close(self) -> None:
        """Nothing to release: the sessions belong to the app's engine."""


class SqliteThreadStore:
    """A batch per hop to one writer thread with one long-lived SQLite connection."""

    def __init__(self, database_url: str, *, busy_timeout_ms: int) -> None:
        self._engine = create_sync_sqlite_engine(database_url, busy_timeout_ms=busy_timeout_ms)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flagpost-sqlite-writer"
        )
        self._conn: Connection | None = None

    async def store(
        self,
        rows: Sequence[events_db.Row],
        updates: Sequence[agents_db.CheckinUpdate],
        works: Sequence[RunWork] = (),
    ) -> StoreResult:
        """:meth:`SessionStore.store` on the writer thread's connection."""
        # The same signature as SessionStore.store on purpose: both implement one store.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._store, rows, updates, works)

    def _store(
        self,
        rows: Sequence[events_db.Row],
        updates: Sequence[agents_db.CheckinUpdate],
        works: Sequence[RunWork],
    ) -> StoreResult:
        if self._conn is None:
            self._conn = self._engine.connect()
        conn = self._conn
        try:
            with conn.begin():
                now = datetime.now(UTC)
                runs = _apply_works(conn, works, now)
                rows = _with_notices(rows, runs, now, "sqlite")
                inserted = events_db.insert_rows_sync(conn, rows)
                agents_db.record_checkins_sync(conn, updates)
        except BaseException:
            self._drop_connection()  # start the next batch on a fresh connection
            raise
        return StoreResult(inserted, runs)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                conn.invalidate()

    def _close(self) -> None:
        self._drop_connection()
        self._engine.dispose()

    async def close(self) -> None:
        """Close the connection and end the thread (after the last ``store``)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


def make_batch_store(
    config: ServerConfig, sessions: async_sessionmaker[AsyncSession]
) -> BatchStore:
    """The fastest store for ``config.database_url`` (see the module docstring)."""
    if config.is_sqlite and sqlite_path(async_url(config.database_url)) is not None:
        return SqliteThreadStore(config.database_url, busy_timeout_ms=config.sqlite_busy_timeout_ms)
    return SessionStore(sessions)
