"""Alembic environment: the app's own config and metadata, an async engine driven via run_sync.

The database URL comes, in order of precedence, from ``config.attributes["database_url"]``
(programmatic use: ``server.storage.schema``), ``-x url=...`` on the alembic command line, then
``server.config.load_config()`` (TOML file + ``FLAGPOST_*`` environment), so there is no second
URL to keep in sync. SQLite migrations run in batch mode (ALTER TABLE is limited there).

This directory is installed as ``server/_alembic`` in a wheel; ``server.resources.ALEMBIC_DIR``
finds it in both layouts.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from server.storage.db import async_url, create_engine_for_url, sqlite_path
from server.storage.models import Base
from server.storage.search import include_name

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    explicit = config.attributes.get("database_url")
    if explicit:
        return str(explicit)
    x_url = context.get_x_argument(as_dictionary=True).get("url")
    if x_url:
        return x_url
    from server.config import load_config

    return load_config().database_url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    render_as_batch = (
        connection.dialect.name == "sqlite"
        if connection is not None
        else str(url).startswith("sqlite")
    )
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        render_as_batch=render_as_batch,
        compare_type=True,
        # The History search's FTS5 table / trigram index are not models (alembic 0011).
        include_name=include_name,
        literal_binds=connection is None,
        dialect_opts={"paramstyle": "named"} if connection is None else {},
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) instead of touching a database."""
    _configure(url=async_url(_database_url()).render_as_string(hide_password=False))
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    url = _database_url()
    path = sqlite_path(async_url(url))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine_for_url(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Migrate a live database. Runs its own event loop: ``server.storage.schema`` calls this
    from a worker thread, so it is safe while another loop runs in the caller's thread."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
        return
    asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
