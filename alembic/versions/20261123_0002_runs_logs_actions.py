"""runs as tasks: migration_runs, run_steps, task_logs, pending_actions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:45:00

Only new tables: a database already holding agents and events upgrades without touching them,
and the downgrade drops exactly these tables. Types written out as in 0001 (no application
imports): ``UTCDateTime`` is ``DateTime(timezone=True)``, JSON is JSONB on PostgreSQL, the log's
64-bit id is INTEGER on SQLite so it autoincrements there.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _index(table: str, columns: list[str]) -> None:
    op.create_index(op.f(f"ix_{table}_" + "_".join(columns)), table, columns, unique=False)


def upgrade() -> None:
    op.create_table(
        "migration_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("migration_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("steps_done", sa.Integer(), nullable=False),
        sa.Column("steps_total", sa.Integer(), nullable=False),
        sa.Column("migration_from", sa.String(length=64), nullable=False),
        sa.Column("migration_to", sa.String(length=64), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("last_update_id", sa.String(length=36), nullable=True),
        sa.Column("requested_by", sa.String(length=128), nullable=True),
        sa.Column("requested_action_id", sa.String(length=36), nullable=True),
        sa.Column("cancel_requested_by", sa.String(length=128), nullable=True),
        sa.Column("cancel_requested_at", _ts(), nullable=True),
        sa.Column("cancelled_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_migration_runs_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_runs")),
    )
    for columns in (
        ["created_at", "id"],
        ["agent_id", "created_at", "id"],
        ["state", "created_at", "id"],
        ["updated_at"],
    ):
        _index("migration_runs", columns)

    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["migration_runs.id"],
            name=op.f("fk_run_steps_run_id_migration_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "idx", name=op.f("pk_run_steps")),
    )

    op.create_table(
        "task_logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", _ts(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metadata_json", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["migration_runs.id"],
            name=op.f("fk_task_logs_run_id_migration_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_logs")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_task_logs_run_id_seq")),
    )
    _index("task_logs", ["run_id", "level", "seq"])
    _index("task_logs", ["run_id", "source", "seq"])

    op.create_table(
        "pending_actions",
        sa.Column("action_id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.Column("delivered_at", _ts(), nullable=True),
        sa.Column("acknowledged_at", _ts(), nullable=True),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_pending_actions_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("action_id", name=op.f("pk_pending_actions")),
    )
    _index("pending_actions", ["agent_id", "acknowledged_at"])
    _index("pending_actions", ["created_at"])


def downgrade() -> None:
    op.drop_table("pending_actions")
    op.drop_table("task_logs")
    op.drop_table("run_steps")
    op.drop_table("migration_runs")
