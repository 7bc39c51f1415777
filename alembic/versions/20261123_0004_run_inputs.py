"""run inputs: what an AWAITING_INPUT run asks for, and the encrypted answers until delivered

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 18:00:00

Four nullable columns on ``migration_runs`` (the fields asked — never answers — when they were
asked, and who answered when) and the table ``run_inputs``: one row per run holding the
Fernet ciphertext of the answers given, deleted when the agent acknowledges the
``provide_input`` action. Types written out as in 0001 (no application imports).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Plain ALTER TABLE, never a batch rebuild (which would cascade into run_steps/task_logs).
    op.add_column("migration_runs", sa.Column("input_request", _json(), nullable=True))
    op.add_column("migration_runs", sa.Column("input_requested_at", _ts(), nullable=True))
    op.add_column(
        "migration_runs", sa.Column("input_answered_by", sa.String(length=128), nullable=True)
    )
    op.add_column("migration_runs", sa.Column("input_answered_at", _ts(), nullable=True))
    op.create_table(
        "run_inputs",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("action_id", sa.String(length=36), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("answered_by", sa.String(length=128), nullable=False),
        sa.Column("answered_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["migration_runs.id"],
            name=op.f("fk_run_inputs_run_id_migration_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_run_inputs")),
    )
    op.create_index(op.f("ix_run_inputs_action_id"), "run_inputs", ["action_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_run_inputs_action_id"), table_name="run_inputs")
    op.drop_table("run_inputs")
    for column in ("input_answered_at", "input_answered_by", "input_requested_at", "input_request"):
        op.drop_column("migration_runs", column)
