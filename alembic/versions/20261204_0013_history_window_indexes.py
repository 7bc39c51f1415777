"""history window indexes: severity and outcome filters combined with a time window

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 19:30:00

"Errors in one day 20 days ago" (``severity`` + ``since`` + ``until``) walked every error newer
than the window through ``(severity, id)``, or every event in the window through
``(occurred_at)``; an outcome (``event_type`` + ``status``) in a window likewise.
``update_events(severity, occurred_at)`` and ``update_events(event_type, status, occurred_at)``
read only the rows inside the window (``python -m tests.bench.history``, BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_update_events_severity_occurred_at", ["severity", "occurred_at"]),
    ("ix_update_events_event_type_status_occurred_at", ["event_type", "status", "occurred_at"]),
)


def upgrade() -> None:
    for name, columns in INDEXES:
        op.create_index(op.f(name), "update_events", columns, unique=False)


def downgrade() -> None:
    for name, _ in INDEXES:
        op.drop_index(op.f(name), table_name="update_events")
