"""fleet indexes: the fleet page's health and config-version counts as index-only scans

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 11:40:00

The fleet overview counts agents by last check-in and by config version (revoked apart) on
every page view; over 100,000 agents those were full scans of a wide table (its JSON facts and
labels). ``agents(revoked, last_checkin_at)`` and ``agents(revoked, config_version)`` cover both
counts (``python -m tests.bench.agent_list``, BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_agents_revoked_last_checkin_at", ["revoked", "last_checkin_at"]),
    ("ix_agents_revoked_config_version", ["revoked", "config_version"]),
)


def upgrade() -> None:
    for name, columns in INDEXES:
        op.create_index(op.f(name), "agents", columns, unique=False)


def downgrade() -> None:
    for name, _ in INDEXES:
        op.drop_index(op.f(name), table_name="agents")
