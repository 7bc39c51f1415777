"""Engines and sessions: the one place that knows how to connect to each database.

SQLite gets WAL, ``synchronous=FULL`` (an acknowledged check-in survives power loss),
a busy timeout and enforced foreign keys on every new connection. PostgreSQL gets asyncpg and a
bounded, pre-pinged pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

from server.config import ServerConfig
from server.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 10
PG_POOL_TIMEOUT_S = 10.0
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
            f"unsupported database driver {url.drivername!r}: use sqlite+aiosqlite:// "
            "or postgresql+asyncpg://"
        )
    return url.set(drivername=driver)


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, ``None`` for in-memory or non-SQLite URLs."""
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def create_engine_for_url(database_url: str, *, echo: bool = False) -> AsyncEngine:
    """An AsyncEngine for ``database_url`` with the per-backend settings described above."""
    url = async_url(database_url)
    engine: AsyncEngine
    if url.drivername.startswith("sqlite"):
        engine = _create_async_engine(
            url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    else:
        engine = _create_async_engine(
            url,
            echo=echo,
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_MAX_OVERFLOW,
            pool_timeout=PG_POOL_TIMEOUT_S,
            pool_recycle=PG_POOL_RECYCLE_S,
            pool_pre_ping=True,
        )
    return engine


def create_engine(config: ServerConfig) -> AsyncEngine:
    """The server's engine for ``config.database_url`` (SQL echo when ``config.log_sql``)."""
    return create_engine_for_url(config.database_url, echo=config.log_sql)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (services return them after the
    transaction ends)."""
    return async_sessionmaker(engine, expire_on_commit=False)
