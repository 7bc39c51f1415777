"""The SQL of live History updates: ordered History writes, commit announcements, and the
PostgreSQL ``LISTEN`` connection that hears them.

Live streams read ``update_events`` with ``id > cursor``. That is only gap-free if a row never
becomes visible after a row with a higher id. One writer per process gives that on SQLite (writes
are serialised by the database anyway), but several replicas sharing PostgreSQL each draw ids from
one sequence and may commit out of order. So every transaction that adds History rows calls:

1. :func:`lock_history_writes` before its first insert: on PostgreSQL a transaction-scoped
   advisory lock, held until COMMIT, so ids are drawn and made visible in order across replicas;
2. :func:`announce_history_commit` after its inserts: the highest id, and on PostgreSQL a
   ``pg_notify`` in the same transaction, delivered only if (and when) the transaction commits.

:class:`HistoryListener` keeps one dedicated connection ``LISTEN``-ing on :data:`CHANNEL` and turns
each notification (and each (re)connection, when notifications may have been missed) into a
callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import String, cast, func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.db import async_url
from server.storage.models import UpdateEvent

log = logging.getLogger(__name__)

CHANNEL = "flagpost_history"
# Run changes: writers pg_notify(RUNS_CHANNEL, run_id) in the transaction that changed the run
# (payload "" = "look at every run"); the run streams of every replica wake up.
RUNS_CHANNEL = "flagpost_runs"
# pg_advisory_xact_lock key: the ASCII bytes of "flagpost" as a signed 64-bit integer.
HISTORY_LOCK_KEY = int.from_bytes(b"flagpost", "big", signed=True)
LISTENER_APPLICATION_NAME = "flagpost-history-listener"

WakeCallback = Callable[[int | None], None]
RunsCallback = Callable[[str | None], None]


def _is_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def lock_history_writes(session: AsyncSession) -> None:
    """Call inside a transaction before inserting History rows. On PostgreSQL it takes a
    transaction-scoped advisory lock (released at COMMIT or ROLLBACK) so that History ids become
    visible in id order even with several server replicas; on SQLite it does nothing."""
    if _is_postgresql(session):
        await session.execute(select(func.pg_advisory_xact_lock(HISTORY_LOCK_KEY)))


async def announce_history_commit(session: AsyncSession, max_id: int | None = None) -> int | None:
    """Call inside the transaction after inserting History rows. Returns the highest History id
    (``max_id`` when the caller knows it: the highest id it inserted, which under
    :func:`lock_history_writes` is the table's; else read from the table, ``None`` when empty).
    On PostgreSQL it also queues ``NOTIFY flagpost_history, '<id>'``, which PostgreSQL delivers
    to every listener when this transaction commits (and never if it rolls back)."""
    postgresql = _is_postgresql(session)
    if max_id is not None:
        if postgresql:
            await session.execute(select(func.pg_notify(CHANNEL, str(max_id))))
        return max_id
    highest = select(func.max(UpdateEvent.id).label("max_id")).subquery()
    if postgresql:
        row = (
            await session.execute(
                select(
                    highest.c.max_id,
                    func.pg_notify(CHANNEL, func.coalesce(cast(highest.c.max_id, String), "")),
                )
            )
        ).one()
    else:
        row = (await session.execute(select(highest.c.max_id))).one()
    return None if row[0] is None else int(row[0])


MAX_RUN_NOTIFICATIONS = 100


async def announce_runs_changed(session: AsyncSession, run_ids: Collection[str]) -> None:
    """Call inside the transaction that changed runs (state, steps or log lines). On PostgreSQL
    it queues ``NOTIFY flagpost_runs, '<run_id>'`` per run (one ``''`` = "every run" beyond
    :data:`MAX_RUN_NOTIFICATIONS`), delivered at COMMIT; on SQLite (one process) it does nothing:
    the writer's commit listener wakes the local streams."""
    if not run_ids or not _is_postgresql(session):
        return
    payloads = sorted(run_ids) if len(run_ids) <= MAX_RUN_NOTIFICATIONS else [""]
    for payload in payloads:
        await session.execute(select(func.pg_notify(RUNS_CHANNEL, payload)))


def parse_payload(payload: str) -> int | None:
    """The id carried by a notification; ``None`` (meaning "look") for anything else."""
    text = payload.strip()
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    return None


def _connect_kwargs(url: URL) -> dict[str, Any]:
    query = dict(url.query)
    host = url.host or query.get("host")
    kwargs: dict[str, Any] = {
        "host": host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "server_settings": {"application_name": LISTENER_APPLICATION_NAME},
    }
    if "ssl" in query:
        kwargs["ssl"] = query["ssl"]
    return {k: v for k, v in kwargs.items() if v is not None}


class HistoryListener:
    """A dedicated asyncpg connection ``LISTEN``-ing on :data:`CHANNEL` (and, with ``on_runs``,
    on :data:`RUNS_CHANNEL`).

    ``on_wake(max_id)`` is called on the event loop for every notification (``max_id`` from its
    payload) and with ``None`` after every (re)connection; ``on_runs(run_id)`` likewise for run
    notifications (``None``: every run). The connection is pinged every
    ``ping_seconds``; when it is lost the listener reconnects with exponential backoff.
    """

    def __init__(
        self,
        database_url: str,
        on_wake: WakeCallback,
        *,
        on_runs: RunsCallback | None = None,
        ping_seconds: float = 30.0,
        retry_initial_seconds: float = 0.5,
        retry_max_seconds: float = 15.0,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        url = async_url(database_url)
        if not url.drivername.startswith("postgresql"):
            raise ValueError("HistoryListener needs a PostgreSQL database_url")
        self._connect_kwargs = _connect_kwargs(url)
        self._on_wake = on_wake
        self._on_runs = on_runs
        self._ping_seconds = ping_seconds
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._connect_timeout = connect_timeout_seconds
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.connections = 0  # successful (re)connections, for tests and metrics
        self.notifications = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Start listening; returns once the first ``LISTEN`` is active. Raises the connection
        error when the database cannot be reached at all on the first attempt."""
        conn = await self._connect()
        self._task = asyncio.get_running_loop().create_task(
            self._run(conn), name="flagpost-history-listener"
        )

    async def close(self) -> None:
        """Stop listening and close the connection (idempotent)."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _connect(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]  # only when PostgreSQL is used

        conn = await asyncpg.connect(timeout=self._connect_timeout, **self._connect_kwargs)
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
            if self._on_runs is not None:
                await conn.add_listener(RUNS_CHANNEL, self._on_runs_notification)
        except BaseException:
            await conn.close()
            raise
        self.connections += 1
        self._connected.set()
        return conn

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        self._on_wake(parse_payload(payload))

    def _on_runs_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        if self._on_runs is not None:
            run_id = payload.strip()
            self._on_runs(run_id if run_id and len(run_id) <= 64 else None)

    async def _run(self, conn: Any) -> None:
        delay = self._retry_initial
        while not self._closing:
            if conn is None:
                try:
                    conn = await self._connect()
                except Exception as exc:  # OSError, timeouts, asyncpg errors: all retried
                    log.warning(
                        "history listener: reconnect failed (%s); retrying in %.1fs",
                        type(exc).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max)
                    continue
                log.info("history listener: reconnected")
                delay = self._retry_initial
                self._on_wake(None)  # notifications may have been missed: every stream looks
                if self._on_runs is not None:
                    self._on_runs(None)
            try:
                await self._watch(conn)
            finally:
                self._connected.clear()
                await self._discard(conn)
                conn = None
            if not self._closing:
                log.warning("history listener: connection lost; reconnecting")

    async def _watch(self, conn: Any) -> None:
        """Return when ``conn`` is closed or stops answering pings."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ping_seconds):
                    await lost.wait()
            if lost.is_set() or conn.is_closed():
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
            except Exception as exc:
                log.warning("history listener: ping failed (%s)", type(exc).__name__)
                return

    async def _discard(self, conn: Any) -> None:
        if conn.is_closed():
            return
        try:
            async with asyncio.timeout(self._connect_timeout):
                await conn.close()
        except Exception:
            conn.terminate()
