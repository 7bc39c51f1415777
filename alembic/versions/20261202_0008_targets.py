"""targets: the labels agents report, server-side tags on agents

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 21:00:00

``agents.labels`` (JSON object, HostFacts.labels of the last check-in; ``{}`` for existing rows)
and ``agent_tags`` (one row per agent and tag, indexed by tag). Plain ``ALTER TABLE`` (no batch
rebuild). Types written out as in 0001 (no application imports).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column(
        "agents",
        sa.Column("labels", _json(), nullable=False, server_default=sa.text("'{}'")),
    )
    op.create_table(
        "agent_tags",
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("tag", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_tags_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "tag", name=op.f("pk_agent_tags")),
    )
    op.create_index(op.f("ix_agent_tags_tag"), "agent_tags", ["tag"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_tags_tag"), table_name="agent_tags")
    op.drop_table("agent_tags")
    op.drop_column("agents", "labels")
