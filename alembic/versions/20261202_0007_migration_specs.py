"""migration specs: uploaded specs and their revisions, what each agent reports, spec fields on
events and runs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 20:00:00

Two tables: ``migration_specs`` (one immutable row per revision of a spec: the source exactly as
uploaded, the canonical JSON agents receive and its SHA-256) and ``agent_spec_versions`` (per
agent and spec, the revision and version its last check-in reported). New columns on
``update_events`` (``spec_id``, ``spec_revision``, ``action_id``, ``diffs``: the JSON list of a
preview's file diffs) with an index for the History's spec filter, and on ``migration_runs``
(``spec_revision``, ``reverts_run_id``). Plain ``ALTER TABLE`` (no batch rebuild: it would
cascade into the rows referencing these tables). Types written out as in 0001 (no application
imports).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "migration_specs",
        sa.Column("spec_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_format", sa.String(length=8), nullable=False),
        sa.Column("canonical", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("spec_id", "revision", name=op.f("pk_migration_specs")),
    )
    op.create_table(
        "agent_spec_versions",
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("spec_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("reported_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_spec_versions_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "spec_id", name=op.f("pk_agent_spec_versions")),
    )
    op.create_index(op.f("ix_agent_spec_versions_spec_id"), "agent_spec_versions", ["spec_id"])
    events = "update_events"
    op.add_column(
        events, sa.Column("spec_id", sa.String(length=64), server_default="", nullable=False)
    )
    op.add_column(
        events, sa.Column("spec_revision", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        events, sa.Column("action_id", sa.String(length=36), server_default="", nullable=False)
    )
    op.add_column(events, sa.Column("diffs", sa.Text(), nullable=True))
    op.create_index(op.f("ix_update_events_spec_id_id"), events, ["spec_id", "id"])
    answered = sa.text("action_id != ''")
    op.create_index(
        op.f("ix_update_events_action_id"),
        events,
        ["action_id"],
        sqlite_where=answered,
        postgresql_where=answered,
    )
    runs = "migration_runs"
    op.add_column(
        runs, sa.Column("spec_revision", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        runs,
        sa.Column("reverts_run_id", sa.String(length=36), server_default="", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("migration_runs", "reverts_run_id")
    op.drop_column("migration_runs", "spec_revision")
    op.drop_index(op.f("ix_update_events_action_id"), table_name="update_events")
    op.drop_index(op.f("ix_update_events_spec_id_id"), table_name="update_events")
    for column in ("diffs", "action_id", "spec_revision", "spec_id"):
        op.drop_column("update_events", column)
    op.drop_index(op.f("ix_agent_spec_versions_spec_id"), table_name="agent_spec_versions")
    op.drop_table("agent_spec_versions")
    op.drop_table("migration_specs")
