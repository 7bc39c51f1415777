"""window indexes carry the id on PostgreSQL

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 02:30:00

A time window's page ("errors in one day 20 days ago") is the window's highest ids. On
PostgreSQL the three window indexes (``occurred_at``; ``severity, occurred_at``; ``event_type,
status, occurred_at``) now ``INCLUDE (id)``, so those ids are found and sorted in the index
alone (an index-only scan) and only the page's rows are read: at 10M events 1.6 s -> about
8 ms (BENCHMARKS.md, "History filter combinations"). SQLite's indexes hold the rowid (the id)
already: nothing changes there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_update_events_occurred_at", ["occurred_at"]),
    ("ix_update_events_severity_occurred_at", ["severity", "occurred_at"]),
    ("ix_update_events_event_type_status_occurred_at", ["event_type", "status", "occurred_at"]),
)


def _rebuild(include: list[str]) -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for name, columns in INDEXES:
        op.drop_index(op.f(name), table_name="update_events")
        op.create_index(
            op.f(name), "update_events", columns, unique=False, postgresql_include=include
        )


def upgrade() -> None:
    _rebuild(["id"])


def downgrade() -> None:
    _rebuild([])
