"""auth changes: what invalidates an agent's cached authentication, written by triggers

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 02:15:00

``auth_changes`` gets a row, from a trigger in the changing transaction, whenever an agent's
``revoked`` or ``rotate_requested_at`` changes, a credential's ``revoked_at`` changes, or an
agent is deleted: whichever process or tool made the change. Each server process reads the
new rows about once a second and forgets those agents' cached credentials, so a credential
cache can live for minutes (``server.services.agents``) and a revocation made anywhere still
takes effect within about a second. Plain statements only; no application imports.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UPGRADE = (
    "CREATE TRIGGER auth_changes_agent AFTER UPDATE OF revoked, rotate_requested_at ON agents "
    "WHEN new.revoked IS NOT old.revoked "
    "OR new.rotate_requested_at IS NOT old.rotate_requested_at "
    "BEGIN INSERT INTO auth_changes (agent_id, changed_at) "
    "VALUES (new.id, strftime('%Y-%m-%d %H:%M:%f', 'now')); END",
    "CREATE TRIGGER auth_changes_agent_deleted AFTER DELETE ON agents "
    "BEGIN INSERT INTO auth_changes (agent_id, changed_at) "
    "VALUES (old.id, strftime('%Y-%m-%d %H:%M:%f', 'now')); END",
    "CREATE TRIGGER auth_changes_credential AFTER UPDATE OF revoked_at ON agent_credentials "
    "WHEN new.revoked_at IS NOT old.revoked_at BEGIN "
    "INSERT INTO auth_changes (agent_id, changed_at) "
    "VALUES (new.agent_id, strftime('%Y-%m-%d %H:%M:%f', 'now')); END",
)
SQLITE_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS auth_changes_credential",
    "DROP TRIGGER IF EXISTS auth_changes_agent_deleted",
    "DROP TRIGGER IF EXISTS auth_changes_agent",
)
PG_UPGRADE = (
    # One statement per case: PL/pgSQL plans a statement when it first runs it, and NEW of an
    # agents row has no agent_id.
    "CREATE FUNCTION flagpost_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_TABLE_NAME = 'agent_credentials' THEN "
    "INSERT INTO auth_changes (agent_id, changed_at) VALUES (NEW.agent_id, now()); "
    "ELSIF TG_OP = 'DELETE' THEN "
    "INSERT INTO auth_changes (agent_id, changed_at) VALUES (OLD.id, now()); "
    "ELSE INSERT INTO auth_changes (agent_id, changed_at) VALUES (NEW.id, now()); "
    "END IF; RETURN NULL; END $$",
    "CREATE TRIGGER auth_changes_agent AFTER UPDATE OF revoked, rotate_requested_at ON agents "
    "FOR EACH ROW WHEN (NEW.revoked IS DISTINCT FROM OLD.revoked "
    "OR NEW.rotate_requested_at IS DISTINCT FROM OLD.rotate_requested_at) "
    "EXECUTE FUNCTION flagpost_auth_changed()",
    "CREATE TRIGGER auth_changes_agent_deleted AFTER DELETE ON agents "
    "FOR EACH ROW EXECUTE FUNCTION flagpost_auth_changed()",
    "CREATE TRIGGER auth_changes_credential AFTER UPDATE OF revoked_at ON agent_credentials "
    "FOR EACH ROW WHEN (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at) "
    "EXECUTE FUNCTION flagpost_auth_changed()",
)
PG_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS auth_changes_credential ON agent_credentials",
    "DROP TRIGGER IF EXISTS auth_changes_agent_deleted ON agents",
    "DROP TRIGGER IF EXISTS auth_changes_agent ON agents",
    "DROP FUNCTION IF EXISTS flagpost_auth_changed()",
)


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    op.create_table(
        "auth_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_changes")),
    )
    for statement in PG_UPGRADE if postgresql else SQLITE_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    for statement in PG_DOWNGRADE if postgresql else SQLITE_DOWNGRADE:
        op.execute(statement)
    op.drop_table("auth_changes")
