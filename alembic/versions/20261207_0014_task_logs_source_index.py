"""task_logs without the (run_id, source, seq) index

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 01:40:00

Every log line maintained four B-trees. On PostgreSQL, 1,000-line check-ins stored about 10 %
more lines per second without this one (``python -m tests.bench.logs --db postgresql``,
BENCHMARKS.md "Log lines"); a source filter or the per-source counts of one run now read that
run's lines through ``(run_id, seq)``, which a run's size bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_task_logs_run_id_source_seq"


def upgrade() -> None:
    op.drop_index(op.f(INDEX), table_name="task_logs")


def downgrade() -> None:
    op.create_index(op.f(INDEX), "task_logs", ["run_id", "source", "seq"], unique=False)
