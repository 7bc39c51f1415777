"""history search: indexed free-text search of the History

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 07:00:00

SQLite: an external-content FTS5 table ``update_events_search`` (trigram tokenizer) over
message and error message, maintained by triggers on ``update_events``, and
backfilled with FTS5's ``rebuild``. PostgreSQL: ``pg_trgm`` and a GIN trigram index on the
concatenation of the same columns (built over the existing rows). Plain statements only (no
batch rebuild). Written out here (no application imports); the names and the index expression
are the ones ``server.storage.search`` queries.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DELETE_OLD = (
    "INSERT INTO update_events_search (update_events_search, rowid, message, error_message) "
    "VALUES ('delete', old.id, old.message, old.error_message);"
)
_INSERT_NEW = (
    "INSERT INTO update_events_search (rowid, message, error_message) "
    "VALUES (new.id, new.message, new.error_message);"
)

SQLITE_UPGRADE = (
    # External content (the text stays in update_events only), rowid = update_events.id;
    # trigram is case-insensitive by default; no per-column sizes (no ranking is done).
    "CREATE VIRTUAL TABLE update_events_search USING fts5(message, error_message, "
    "content='update_events', content_rowid='id', tokenize='trigram', columnsize=0)",
    # Maintained in the writing transaction: ingest, retention, an agent's cascade delete.
    "CREATE TRIGGER update_events_search_ai AFTER INSERT ON update_events "
    "BEGIN " + _INSERT_NEW + " END",
    "CREATE TRIGGER update_events_search_ad AFTER DELETE ON update_events "
    "BEGIN " + _DELETE_OLD + " END",
    "CREATE TRIGGER update_events_search_au AFTER UPDATE OF message, error_message "
    "ON update_events BEGIN " + _DELETE_OLD + " " + _INSERT_NEW + " END",
    # Backfill: index every stored event.
    "INSERT INTO update_events_search (update_events_search) VALUES ('rebuild')",
)
SQLITE_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS update_events_search_au",
    "DROP TRIGGER IF EXISTS update_events_search_ad",
    "DROP TRIGGER IF EXISTS update_events_search_ai",
    "DROP TABLE IF EXISTS update_events_search",
)
_PG_EXPRESSION = "(message || ' ' || error_message)"
PG_UPGRADE = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX ix_update_events_search ON update_events "
    f"USING gin ({_PG_EXPRESSION} gin_trgm_ops)",
)
# pg_trgm stays installed: something else of the database may use it.
PG_DOWNGRADE = ("DROP INDEX IF EXISTS ix_update_events_search",)


def _run(statements: Sequence[str]) -> None:
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _run(PG_UPGRADE)
    else:
        _run(SQLITE_UPGRADE)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _run(PG_DOWNGRADE)
    else:
        _run(SQLITE_DOWNGRADE)
