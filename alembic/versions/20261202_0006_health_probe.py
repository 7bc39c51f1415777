"""health probe: one row the database health probe writes to prove the database takes writes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:00:00

``health_probe`` holds a single row (``id`` 1) whose ``writes`` counter the health probe
(``server.storage.db.probe``) upserts and commits, so a full disk or a read-only database fails
the probe instead of only the check-ins. No other table references it. Types written out as in
0001 (no application imports).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "health_probe"


def upgrade() -> None:
    table = op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("writes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_probe"),
    )
    op.bulk_insert(table, [{"id": 1, "writes": 0}])


def downgrade() -> None:
    op.drop_table(TABLE)
