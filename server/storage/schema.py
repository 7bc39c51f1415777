"""Schema management: alembic driven from code (the CLI's ``db`` commands, tests, auto-upgrade).

alembic's env.py runs its own event loop, so every function here runs alembic in a worker
thread: they are safe to call from synchronous code, from a thread (``asyncio.to_thread``) and
even, blocking briefly, from inside a running event loop.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.errors import SchemaOutOfDate
from server.resources import ALEMBIC_DIR

UPGRADE_HINT = "run `flagpost-server db upgrade`"

T = TypeVar("T")


def alembic_config(database_url: str | None = None) -> Config:
    """An alembic Config for the bundled migrations, pinned to ``database_url`` when given.

    Built in code, without alembic.ini (which only the ``alembic`` command line in a checkout
    reads), so it is the same in a checkout and in an installed wheel. The server sets up its own
    logging, so env.py leaves logging alone."""
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["skip_logging_config"] = True
    if database_url is not None:
        cfg.attributes["database_url"] = database_url
    return cfg


def _in_thread(fn: Callable[[], T]) -> T:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database at ``database_url`` up to ``revision`` (default: the newest)."""
    _in_thread(lambda: command.upgrade(alembic_config(database_url), revision))


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database at ``database_url`` down to ``revision`` (``"base"`` empties it)."""
    _in_thread(lambda: command.downgrade(alembic_config(database_url), revision))


def head_revision() -> str:
    """The newest revision in ``alembic/versions`` (the project keeps a single head)."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"alembic must have exactly one head, found {heads}")
    return heads[0]


def _current_heads(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def current_revision(database_url: str) -> str | None:
    """The revision the database at ``database_url`` is at, ``None`` for an empty database."""
    from server.storage.db import create_engine_for_url

    async def read() -> tuple[str, ...]:
        engine = create_engine_for_url(database_url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_current_heads)
        finally:
            await engine.dispose()

    import asyncio

    heads = _in_thread(lambda: asyncio.run(read()))
    return heads[0] if heads else None


async def assert_schema_current(engine: AsyncEngine) -> None:
    """Raise SchemaOutOfDate unless the database is exactly at the code's head revision;
    Unavailable when the database cannot be reached."""
    from server.storage.db import unreachable

    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(_current_heads)
    except (SQLAlchemyError, OSError) as exc:
        raise unreachable(engine.url, exc) from exc
    head = head_revision()
    if current == (head,):
        return
    if not current:
        raise SchemaOutOfDate(f"the database is empty (no schema yet): {UPGRADE_HINT}")
    known = ScriptDirectory.from_config(alembic_config())
    try:
        for rev in current:
            known.get_revision(rev)
    except Exception as exc:  # alembic raises CommandError/ResolutionError for unknown ids
        raise SchemaOutOfDate(
            f"the database is at revision {', '.join(current)}, unknown to this version of "
            f"flagpost-server (newer?); expected {head}"
        ) from exc
    raise SchemaOutOfDate(
        f"the database schema is at revision {', '.join(current)}, the code needs {head}: "
        f"{UPGRADE_HINT}"
    )
