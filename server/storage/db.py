"""Engines and sessions: the one place that knows how to connect to each database.

SQLite gets WAL, ``synchronous=FULL`` (an acknowledged check-in survives power loss),
a busy timeout and enforced foreign keys on every new connection. PostgreSQL gets asyncpg and a
bounded, pre-pinged pool.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine as _create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, NullPool

from server.config import ServerConfig
from server.errors import ConfigError, Overloaded, Unavailable
from server.storage.faults import DbFault, classify

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_CACHE_KIB = 32 * 1024  # page cache per connection
PG_POOL_SIZE = 10  # defaults of database_pool_size / database_pool_timeout_seconds
PG_MAX_OVERFLOW = 10
PG_POOL_TIMEOUT_S = 10.0
POOL_RETRY_AFTER_MS = 2_000
PG_POOL_RECYCLE_S = 1800

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def async_url(database_url: str) -> URL:
    """Parse ``database_url`` and pin the async driver (``sqlite://`` -> ``sqlite+aiosqlite://``,
    ``postgresql://`` -> ``postgresql+asyncpg://``). Other drivers are a ConfigError."""
    try:
        url = make_url(database_url)
    except Exception as exc:  # sqlalchemy raises ArgumentError for malformed URLs
        raise ConfigError(f"invalid database_url: {exc}") from exc
    driver = _ASYNC_DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigError(
            f"unsupported database driver {url.drivername!r} in database_url "
            f"{display_url(url)}: use sqlite+aiosqlite:///PATH or "
            "postgresql+asyncpg://USER@HOST:PORT/DB (--database-url, env FLAGPOST_DATABASE_URL)"
        )
    return url.set(drivername=driver)


def display_url(database_url: str | URL) -> str:
    """``database_url`` for messages and logs: its password, if any, shown as ``***``."""
    try:
        url = database_url if isinstance(database_url, URL) else make_url(database_url)
    except Exception:  # sqlalchemy raises ArgumentError for malformed URLs
        return "(malformed URL)"
    return url.render_as_string(hide_password=True)


def is_connect_error(exc: BaseException) -> bool:
    """True when ``exc`` is a failure to connect: an OSError from the driver (refused, no such
    host, timed out) or a DBAPI error raised before any statement (SQLite cannot open the file,
    PostgreSQL refused the login or has no such database)."""
    return isinstance(exc, OSError) or (isinstance(exc, DBAPIError) and exc.statement is None)


def _sqlite_problem(path: Path) -> str:
    """Why SQLite may not open or create ``path``: the OS reason for the file or, when it does
    not exist, for its directory ("" when nothing is wrong that the OS can tell)."""
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR))
            return ""
        directory = path.parent
        if not directory.exists():
            return f"directory {directory} does not exist"
        if not directory.is_dir():
            return f"{directory} is not a directory"
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"directory {directory}: {os.strerror(errno.EROFS)}"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"directory {directory}: {os.strerror(errno.EACCES)}"
    except OSError as exc:
        return f"{exc.filename or path}: {exc.strerror or exc}"
    return ""


_UNWRITABLE_HINTS = {
    DbFault.DISK_FULL: "free space on its filesystem, then start again",
    DbFault.READ_ONLY: (
        "make the database (file and directory) writable by the user the server runs as, or "
        "mount it read-write, then start again"
    ),
}


def unwritable(database_url: str | URL, fault: DbFault) -> Unavailable:
    """Unavailable for a database that cannot be written (``fault.unwritable``): the cause, the
    database (a SQLite file's path, otherwise the URL without its password) and the fix."""
    try:
        url = database_url if isinstance(database_url, URL) else make_url(database_url)
    except Exception:  # sqlalchemy raises ArgumentError for malformed URLs
        url = None
    path = sqlite_path(url) if url is not None else None
    where = str(path) if path is not None else display_url(database_url)
    hint = _UNWRITABLE_HINTS.get(fault, "make it writable, then start again")
    return Unavailable(f"the database cannot be written: {fault} ({where}); {hint}")


def _sqlite_fault(database_url: str | URL, exc: BaseException) -> DbFault:
    """``classify(exc)``; for a SQLite file, a vague cause (SQLite says "disk I/O error" when
    it cannot grow its shared-memory file on a full disk) becomes what its filesystem shows:
    read-only, or fewer than ``SQLITE_MIN_FREE_BYTES`` free."""
    fault = classify(exc)
    if fault not in (DbFault.OTHER, DbFault.UNREACHABLE):
        return fault
    try:
        url = database_url if isinstance(database_url, URL) else make_url(database_url)
    except Exception:  # sqlalchemy raises ArgumentError for malformed URLs
        return fault
    path = sqlite_path(url)
    if path is None or not path.exists():
        return fault
    try:
        _check_sqlite_space(path, SQLITE_MIN_FREE_BYTES)
    except OSError as full_or_read_only:
        return classify(full_or_read_only)
    return fault


def unreachable(database_url: str | URL, exc: BaseException) -> Unavailable:
    """Unavailable for a failure to connect to ``database_url``: the URL without its password,
    the driver's or the OS's reason, and where the URL is set (``unwritable`` when the cause is
    a full disk or a read-only database, which SQLite may report on opening the file)."""
    fault = _sqlite_fault(database_url, exc)
    if fault.unwritable:
        return unwritable(database_url, fault)
    if isinstance(exc, DBAPIError):
        reason = (
            str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc).__name__
        )
    else:
        reason = str(exc).strip() or type(exc).__name__
    try:
        url = database_url if isinstance(database_url, URL) else make_url(database_url)
    except Exception:  # sqlalchemy raises ArgumentError for malformed URLs
        url = None
    path = sqlite_path(url) if url is not None else None
    if path is not None:
        problem = _sqlite_problem(path)
        if problem:
            reason = f"{reason} ({problem})"
        hint = "fix the path, or create the database with `flagpost-server db upgrade`"
    else:
        hint = "is the database server running and accepting this user?"
    return Unavailable(
        f"cannot connect to the database {display_url(database_url)}: {reason}; {hint} "
        "(database_url: --database-url, env FLAGPOST_DATABASE_URL)"
    )


@contextmanager
def translate_connect_errors(database_url: str) -> Iterator[None]:
    """Turn a failure to connect to ``database_url`` inside the block into :func:`unreachable`
    (other errors pass through unchanged)."""
    try:
        yield
    except Exception as exc:
        if is_connect_error(exc):
            raise unreachable(database_url, exc) from exc
        raise


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, ``None`` for in-memory or non-SQLite URLs."""
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # update_events carries 7 indexes; keep their hot pages in memory (2 MiB default).
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cursor.execute("PRAGMA temp_store=MEMORY")
        finally:
            cursor.close()

    return set_pragmas


def _shedding_pool(retry_after_ms: int) -> type[AsyncAdaptedQueuePool]:
    """A queue pool whose checkout timeout raises ``Overloaded`` (with ``retry_after_ms``)
    instead of SQLAlchemy's ``TimeoutError``: the one place pool exhaustion is translated."""

    class SheddingPool(AsyncAdaptedQueuePool):
        def _do_get(self) -> ConnectionPoolEntry:
            try:
                return super()._do_get()
            except PoolTimeout as exc:
                raise Overloaded(
                    "the server is busy (no database connection free); retry later",
                    retry_after_ms=retry_after_ms,
                ) from exc

    # SQLAlchemy names a pool's logger after its class: keep this one as quiet as its own
    # (pool events are DEBUG detail, not start-up or error lines).
    logging.getLogger(f"{__name__}.SheddingPool").setLevel(logging.WARNING)
    return SheddingPool


def create_engine_for_url(
    database_url: str,
    *,
    echo: bool = False,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    pool_size: int = PG_POOL_SIZE,
    pool_timeout_s: float = PG_POOL_TIMEOUT_S,
    retry_after_ms: int = POOL_RETRY_AFTER_MS,
) -> AsyncEngine:
    """An AsyncEngine for ``database_url`` with the per-backend settings described above
    (``busy_timeout_ms``: how long a SQLite write waits for a lock held elsewhere). A SQLite
    file and PostgreSQL get a pool of ``pool_size`` (+ as many in overflow); a checkout that
    waits longer than ``pool_timeout_s`` raises ``Overloaded``."""
    url = async_url(database_url)
    pool: dict[str, Any] = {
        "poolclass": _shedding_pool(retry_after_ms),
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_timeout": pool_timeout_s,
    }
    engine: AsyncEngine
    if url.drivername.startswith("sqlite"):
        engine = _create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": busy_timeout_ms / 1000},
            **(pool if sqlite_path(url) is not None else {}),
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_ms))
    else:
        engine = _create_async_engine(
            url, echo=echo, pool_recycle=PG_POOL_RECYCLE_S, pool_pre_ping=True, **pool
        )
    return engine


def create_sync_sqlite_engine(database_url: str, *, busy_timeout_ms: int) -> Engine:
    """A synchronous (pysqlite) engine on the same SQLite file, same pragmas, no pooling: for
    the ingest writer thread, which holds one connection for its lifetime."""
    url = async_url(database_url)
    if sqlite_path(url) is None:
        raise ConfigError("a writer thread needs a SQLite file, not an in-memory database")
    engine = _create_sync_engine(
        url.set(drivername="sqlite+pysqlite"),
        poolclass=NullPool,
        connect_args={"timeout": busy_timeout_ms / 1000},
    )
    event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms))
    return engine


def create_engine(config: ServerConfig) -> AsyncEngine:
    """The server's engine for ``config.database_url`` (SQL echo when ``config.log_sql``)."""
    return create_engine_for_url(
        config.database_url,
        echo=config.log_sql,
        busy_timeout_ms=config.sqlite_busy_timeout_ms,
        pool_size=config.database_pool_size,
        pool_timeout_s=config.database_pool_timeout_seconds,
        retry_after_ms=config.retry_after_ms,
    )


def create_web_engine(config: ServerConfig, main: AsyncEngine) -> AsyncEngine:
    """The web's own engine (pages, API, live streams) on the same database: a pool of
    ``web_database_pool_size`` apart from ``main``'s, so agent authentication and ingest never
    wait behind web requests; its exhaustion is ``Overloaded`` (503 + Retry-After) like the
    main pool's. An in-memory SQLite database cannot be opened twice: ``main`` is returned."""
    url = async_url(config.database_url)
    if url.drivername.startswith("sqlite") and sqlite_path(url) is None:
        return main
    return create_engine_for_url(
        config.database_url,
        echo=config.log_sql,
        busy_timeout_ms=config.sqlite_busy_timeout_ms,
        pool_size=config.web_database_pool_size,
        pool_timeout_s=config.web_database_pool_timeout_seconds,
        retry_after_ms=config.retry_after_ms,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (services return them after the
    transaction ends)."""
    return async_sessionmaker(engine, expire_on_commit=False)


SQLITE_MIN_FREE_BYTES = 1 << 20  # less free space than this beside a SQLite file: disk full
PROBE_UPSERT = (
    "INSERT INTO health_probe (id, writes) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET writes = health_probe.writes + 1"
)


def free_bytes(path: Path) -> int:
    """Bytes this process may still write on the filesystem of ``path`` (root may use the
    blocks reserved for it)."""
    stats = os.statvfs(path)
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return blocks * stats.f_frsize


def _check_sqlite_space(path: Path, min_free_bytes: int) -> None:
    """OSError EROFS when the filesystem of ``path`` is mounted read-only, ENOSPC when less
    than ``min_free_bytes`` are free there. A committed write is not proof enough on its own:
    SQLite reuses its WAL file's space after a checkpoint, so small writes keep succeeding on a
    full disk while larger ingest batches, which must grow the WAL, fail."""
    stats = os.statvfs(path)
    if stats.f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    if free_bytes(path) < min_free_bytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _probe_sqlite_file(path: Path, timeout_s: float, min_free_bytes: int) -> None:
    # A separate, short-lived connection: the engine's pooled connections keep their long busy
    # timeout. BEGIN IMMEDIATE takes the write lock, so a database locked by another process
    # (which still lets WAL readers through) counts as unavailable for ingest; the committed
    # upsert (synchronous=FULL, as the engine's connections) proves the file takes writes.
    _check_sqlite_space(path, min_free_bytes)
    conn = sqlite3.connect(
        f"file:{path}?mode=rw", uri=True, timeout=timeout_s, isolation_level=None
    )
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(PROBE_UPSERT)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


async def probe(
    engine: AsyncEngine, timeout_s: float, *, min_free_bytes: int = SQLITE_MIN_FREE_BYTES
) -> None:
    """Check the database takes a committed write within ``timeout_s``; raise otherwise
    (``server.storage.faults.classify`` names the cause).

    SQLite: the filesystem is writable with at least ``min_free_bytes`` free, then an upsert of
    the one ``health_probe`` row on a separate connection. PostgreSQL: the same upsert on a
    pooled connection (the pool's pre-ping replaces dead connections); a read-only database
    (``default_transaction_read_only``, a standby) fails it with SQLSTATE 25006."""
    url = engine.url
    if url.drivername.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            await asyncio.to_thread(_probe_sqlite_file, path, timeout_s, min_free_bytes)
        return
    async with asyncio.timeout(timeout_s), engine.begin() as conn:
        await conn.exec_driver_sql(PROBE_UPSERT)


def database_free_bytes(engine: AsyncEngine) -> int | None:
    """Free bytes beside a SQLite database file (``free_bytes``); None for other databases or
    when the filesystem cannot be asked."""
    path = sqlite_path(engine.url)
    if path is None:
        return None
    try:
        return free_bytes(path)
    except OSError:
        return None
