"""rollouts: a spec run on selected hosts in waves with gates

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 23:20:00

``rollouts`` (one per rollout: spec revision, selector, waves, gates, state and the wave in
progress), ``rollout_hosts`` (the hosts it selected, their wave, action, run and outcome),
``rollout_transitions`` (who changed its state, when and why), and an index on
``migration_runs.requested_action_id`` (the scheduler finds its hosts' runs by action id).
Types written out as in 0001 (no application imports).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("spec_id", sa.String(length=64), nullable=False),
        sa.Column("spec_revision", sa.Integer(), nullable=False),
        sa.Column("selector", _json(), nullable=False),
        sa.Column("wave_labels", _json(), nullable=False),
        sa.Column("wave_sizes", _json(), nullable=False),
        sa.Column("max_failure_rate", sa.Float(), nullable=True),
        sa.Column("max_failures", sa.Integer(), nullable=True),
        sa.Column("soak_seconds", sa.Integer(), nullable=False),
        sa.Column("wave_timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("wave_started_at", _ts(), nullable=True),
        sa.Column("wave_finished_at", _ts(), nullable=True),
        sa.Column("override_wave", sa.Integer(), nullable=False),
        sa.Column("revert_wave", sa.Integer(), nullable=False),
        sa.Column("hosts_total", sa.Integer(), nullable=False),
        sa.Column("hosts_done", sa.Integer(), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_created_at_id"), "rollouts", ["created_at", "id"])
    op.create_index(op.f("ix_rollouts_settled"), "rollouts", ["settled"])
    op.create_table(
        "rollout_hosts",
        sa.Column("rollout_id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("rank", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("action_id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("revert_state", sa.String(length=16), nullable=False),
        sa.Column("revert_action_id", sa.String(length=36), nullable=False),
        sa.Column("revert_run_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_rollout_hosts_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_hosts_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", "agent_id", name=op.f("pk_rollout_hosts")),
    )
    op.create_index(
        op.f("ix_rollout_hosts_rollout_id_wave_state"),
        "rollout_hosts",
        ["rollout_id", "wave", "state"],
    )
    op.create_table(
        "rollout_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rollout_id", sa.String(length=36), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_transitions_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_transitions")),
    )
    op.create_index(
        op.f("ix_rollout_transitions_rollout_id"), "rollout_transitions", ["rollout_id"]
    )
    op.create_index(
        op.f("ix_migration_runs_requested_action_id"), "migration_runs", ["requested_action_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_migration_runs_requested_action_id"), table_name="migration_runs")
    op.drop_index(op.f("ix_rollout_transitions_rollout_id"), table_name="rollout_transitions")
    op.drop_table("rollout_transitions")
    op.drop_index(op.f("ix_rollout_hosts_rollout_id_wave_state"), table_name="rollout_hosts")
    op.drop_table("rollout_hosts")
    op.drop_index(op.f("ix_rollouts_settled"), table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_created_at_id"), table_name="rollouts")
    op.drop_table("rollouts")
