"""event ids unique per agent: ``(agent_id, event_id)`` instead of ``event_id`` alone

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 09:00:00

An agent's ``event_id`` is its own idempotency key: one agent must not be able to pre-claim
another's id (which made the other's event look like a duplicate and silently dropped it).
The unique constraint ``uq_update_events_event_id`` becomes the unique index
``ix_update_events_agent_id_event_id`` (the ingest's ``ON CONFLICT (agent_id, event_id)``
target).

PostgreSQL: plain ``ALTER TABLE … DROP CONSTRAINT`` and ``CREATE UNIQUE INDEX``. SQLite cannot
drop a table constraint, so there the table is copied into a new one without it, in the same
transaction, with every column and id kept (written out here, not alembic's batch mode). No
table references ``update_events``, so dropping the old table cascades into nothing (a test
counts every row of every table across down and up). Downgrade refuses while two agents share
an ``event_id`` (it would have to delete one of them). Types written out as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "update_events"
COPY = "update_events_0005"
OLD_UNIQUE = "uq_update_events_event_id"
NEW_UNIQUE = "ix_update_events_agent_id_event_id"
INDEXES = (
    ["agent_id", "id"],
    ["severity", "id"],
    ["event_type", "id"],
    ["category", "id"],
    ["occurred_at"],
    ["run_id"],
)
COLUMNS = (
    "id, event_id, agent_id, category, event_type, status, severity, message, error_message, "
    "error_detail, migration_from, migration_to, run_id, system_info, occurred_at, received_at"
)


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _rebuild_sqlite(*, event_id_unique: bool) -> None:
    """Copy ``update_events`` into a new table (with or without the old unique constraint),
    ids and all, then put the new table and its indexes in the old one's place."""
    constraints: list[sa.schema.SchemaItem] = [
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name="fk_update_events_agent_id_agents",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_update_events"),
    ]
    if event_id_unique:
        constraints.append(sa.UniqueConstraint("event_id", name=OLD_UNIQUE))
    op.create_table(
        COPY,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("error_detail", _json(), nullable=False),
        sa.Column("migration_from", sa.String(length=64), nullable=False),
        sa.Column("migration_to", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("system_info", _json(), nullable=False),
        sa.Column("occurred_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        *constraints,
    )
    op.execute(f"INSERT INTO {COPY} ({COLUMNS}) SELECT {COLUMNS} FROM {TABLE}")  # noqa: S608
    op.drop_table(TABLE)
    op.rename_table(COPY, TABLE)
    for columns in INDEXES:
        op.create_index(f"ix_{TABLE}_" + "_".join(columns), TABLE, columns, unique=False)


def upgrade() -> None:
    if _is_sqlite():
        _rebuild_sqlite(event_id_unique=False)
    else:
        op.drop_constraint(OLD_UNIQUE, TABLE, type_="unique")
    op.create_index(NEW_UNIQUE, TABLE, ["agent_id", "event_id"], unique=True)


def downgrade() -> None:
    shared = op.get_bind().execute(
        sa.text(
            f"SELECT count(*) FROM (SELECT event_id FROM {TABLE} "  # noqa: S608
            "GROUP BY event_id HAVING count(*) > 1) AS shared"
        )
    )
    count = int(shared.scalar_one())
    if count:
        raise RuntimeError(
            f"cannot downgrade below 0005: {count} event ids are stored for more than one "
            "agent, and revision 0004 allows each event id once; delete those rows first"
        )
    op.drop_index(NEW_UNIQUE, table_name=TABLE)
    if _is_sqlite():
        _rebuild_sqlite(event_id_unique=True)
    else:
        op.create_unique_constraint(OLD_UNIQUE, TABLE, ["event_id"])
