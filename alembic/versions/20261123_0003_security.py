"""security: web users and sessions, the server-key registry, action nonces, credential rotation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 16:20:00

New tables (``web_users``, ``web_sessions``, ``server_keys``) and three added columns with
defaults, so a database holding agents, events and runs upgrades in place; the downgrade removes
exactly these. Columns are added and dropped with plain ALTER TABLE (SQLite >= 3.35),
never a batch rebuild, so no row is lost to a cascade. Types written out as in 0001 (no application imports).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "web_users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_users")),
        sa.UniqueConstraint("name", name=op.f("uq_web_users_name")),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["web_users.id"],
            name=op.f("fk_web_sessions_user_id_web_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_web_sessions")),
    )
    op.create_index(op.f("ix_web_sessions_expires_at"), "web_sessions", ["expires_at"])
    op.create_table(
        "server_keys",
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("purpose", name=op.f("pk_server_keys")),
    )
    # Plain ALTER TABLE, never batch mode: on SQLite a batch rebuild drops and recreates the
    # table, and with foreign keys on that cascades into every row that references it.
    op.add_column(
        "pending_actions",
        sa.Column("nonce", sa.String(length=32), server_default="", nullable=False),
    )
    op.add_column("agents", sa.Column("rotate_requested_at", _ts(), nullable=True))
    op.add_column("agent_credentials", sa.Column("last_used_at", _ts(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch rebuild: see upgrade().
    op.drop_column("agent_credentials", "last_used_at")
    op.drop_column("agents", "rotate_requested_at")
    op.drop_column("pending_actions", "nonce")
    op.drop_table("server_keys")
    op.drop_index(op.f("ix_web_sessions_expires_at"), table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("web_users")
