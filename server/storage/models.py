"""Declarative models: the schema alembic migrates (never ``create_all``).

Portable across SQLite and PostgreSQL: a naming convention for every constraint and index,
timestamps stored as UTC and always read back timezone-aware, JSON that is JSONB on PostgreSQL,
and 64-bit ids that still autoincrement on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
# BIGINT primary keys do not autoincrement on SQLite; INTEGER there is already 64-bit.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
    }


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    machine_id: Mapped[str] = mapped_column(String(128), default="")
    os: Mapped[str] = mapped_column(String(255), default="")
    kernel: Mapped[str] = mapped_column(String(255), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    config_version: Mapped[str] = mapped_column(String(64), default="")
    disk_free_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # HostFacts.labels as a JSON object (selectors read it with JSON path expressions)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enrolled_at: Mapped[datetime]
    last_checkin_at: Mapped[datetime | None] = mapped_column(index=True)
    checkin_interval_seconds: Mapped[int] = mapped_column(Integer, default=60)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None]
    # `flagpost-server agent rotate ID`: the next check-in hands out a new credential.
    rotate_requested_at: Mapped[datetime | None]

    __table_args__ = (
        Index(None, "hostname"),
        # The fleet page's counts read only these (index-only scans of a large fleet).
        Index(None, "revoked", "last_checkin_at"),
        Index(None, "revoked", "config_version"),
    )


class EnrollmentToken(Base):
    """One enrollment token. Only a SHA-256 of the (high-entropy) token is kept."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell tokens apart
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    uses_left: Mapped[int] = mapped_column(Integer)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AgentCredential(Base):
    """An agent's bearer credential. Only a SHA-256 of the secret part is kept."""

    __tablename__ = "agent_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # NULL until the agent first authenticates with it (a rotated-in credential that was never
    # used keeps the previous one valid).
    last_used_at: Mapped[datetime | None]


class AuthChange(Base):
    """A change that may invalidate an agent's cached authentication (revoked, credential
    revoked, rotation requested, deleted), written by database triggers (alembic 0015) so
    that every process sees every writer's changes: ``server.services.agents.Authenticator``
    reads the new rows about once a second. Pruned after an hour by retention."""

    __tablename__ = "auth_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(String(36))  # no foreign key: deletions are changes
    changed_at: Mapped[datetime]


class UpdateEvent(Base):
    """The History: append-only. ``id`` is monotonic and is the keyset / stream cursor."""

    __tablename__ = "update_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36))  # unique per agent (index below)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    error_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    migration_from: Mapped[str] = mapped_column(String(64), default="")
    migration_to: Mapped[str] = mapped_column(String(64), default="")
    run_id: Mapped[str | None] = mapped_column(String(36))
    system_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    # Events of a migration spec (alembic 0007): which spec and revision, the action answered
    # (a preview's), and a preview's file diffs as a JSON list of {path, diff, operations, note}.
    spec_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    spec_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    action_id: Mapped[str] = mapped_column(String(36), default="", server_default="")
    diffs: Mapped[str | None] = mapped_column(Text)

    # Every History filter is "<filter> ORDER BY id DESC": an index ending in id serves each.
    __table_args__ = (
        Index(None, "agent_id", "event_id", unique=True),  # the ingest's ON CONFLICT target
        Index(None, "agent_id", "id"),
        Index(None, "severity", "id"),
        Index(None, "event_type", "id"),
        Index(None, "category", "id"),
        # The window indexes carry the id on PostgreSQL (SQLite's hold the rowid): a window's
        # page is picked in the index alone (alembic 0016, storage.history.page_query).
        Index(None, "occurred_at", postgresql_include=["id"]),
        # A severity or an outcome within a time window reads only the window (alembic 0013).
        Index(None, "severity", "occurred_at", postgresql_include=["id"]),
        Index(None, "event_type", "status", "occurred_at", postgresql_include=["id"]),
        Index(None, "run_id"),
        Index(None, "spec_id", "id"),
        # The few events answering an action (previews): found without scanning the History.
        Index(
            None,
            "action_id",
            sqlite_where=text("action_id != ''"),
            postgresql_where=text("action_id != ''"),
        ),
    )


class MigrationRun(Base):
    """One detection + execution attempt on one agent (``id`` is the agent-made run_id).

    ``last_update_id`` is the newest ``RunUpdate.update_id`` applied (UUIDv7s sort by time as
    text): an older update is ignored. NULL means the row was created for log lines that
    arrived before any update of the run.
    """

    __tablename__ = "migration_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    migration_id: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16))
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    steps_total: Mapped[int] = mapped_column(Integer, default=0)
    migration_from: Mapped[str] = mapped_column(String(64), default="")
    migration_to: Mapped[str] = mapped_column(String(64), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_update_id: Mapped[str | None] = mapped_column(String(36))
    requested_by: Mapped[str | None] = mapped_column(String(128))
    requested_action_id: Mapped[str | None] = mapped_column(String(36))
    cancel_requested_by: Mapped[str | None] = mapped_column(String(128))
    cancel_requested_at: Mapped[datetime | None]
    cancelled_by: Mapped[str | None] = mapped_column(String(128))
    # AWAITING_INPUT: the last input request ({"request_id", "fields": [{name, label,
    # secret, error}]} -- what is asked, never an answer), kept after the run moves on; when the
    # server received it; who answered last and when (answers themselves: ``run_inputs``).
    input_request: Mapped[dict[str, Any] | None]
    input_requested_at: Mapped[datetime | None]
    input_answered_by: Mapped[str | None] = mapped_column(String(128))
    input_answered_at: Mapped[datetime | None]
    # A spec run (alembic 0007): ``migration_id`` is the spec id, this its revision; a revert
    # names the run it reverts.
    spec_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reverts_run_id: Mapped[str] = mapped_column(String(36), default="", server_default="")

    # Lists are "<filter> ORDER BY created_at DESC, id DESC" (keyset); retention scans by age.
    __table_args__ = (
        Index(None, "created_at", "id"),
        Index(None, "agent_id", "created_at", "id"),
        Index(None, "state", "created_at", "id"),
        Index(None, "updated_at"),
        Index(None, "requested_action_id"),  # a rollout finds its hosts' runs (alembic 0009)
    )


class RunStepRow(Base):
    """One step of a run, as last reported."""

    __tablename__ = "run_steps"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("migration_runs.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class TaskLog(Base):
    """One log line of a run; ``seq`` is per run, gap-free from 1, assigned by the agent."""

    __tablename__ = "task_logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("migration_runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[datetime]
    level: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    metadata_json: Mapped[dict[str, Any]] = mapped_column(default=dict)

    # The viewer filters one run by level and/or source in seq order: a level filter ("errors
    # only") through the level index, a source filter through (run_id, seq) (alembic 0014).
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        Index(None, "run_id", "level", "seq"),
    )


class PendingActionRow(Base):
    """An action for an agent: delivered with every check-in until acknowledged or expired."""

    __tablename__ = "pending_actions"

    action_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    # 16 random bytes, hex: signed into the action; the agent executes a nonce at most once.
    nonce: Mapped[str] = mapped_column(String(32), default="", server_default="")

    __table_args__ = (
        Index(None, "agent_id", "acknowledged_at"),
        Index(None, "created_at"),
    )


class WebUser(Base):
    """A person who logs in to the web. Only an argon2id hash of the password is kept."""

    __tablename__ = "web_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "viewer"
    created_at: Mapped[datetime]
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class WebSession(Base):
    """A logged-in browser. Only a SHA-256 of the (256-bit random) cookie value is kept."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ServerKey(Base):
    """Which key each server replica must hold, one row per purpose: "signing" (the Ed25519 key
    that signs actions; ``public_key`` is its raw public half, hex) and "inputs" (the Fernet key
    of answers to input requests; only an HMAC fingerprint as ``key_id``, ``public_key`` "").
    ``key_id`` is a SHA-256 hex. The first server registers its keys; a server whose key
    differs refuses to start, so replicas sharing a PostgreSQL cannot drift apart."""

    __tablename__ = "server_keys"

    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime]


class RunInput(Base):
    """The answers an admin gave to a run's input request, Fernet-encrypted with the server's
    ``<state_dir>/inputs.key`` (``server.services.inputs``), until the agent acknowledges the
    ``provide_input`` action (``action_id``) that carries them; then the row is deleted."""

    __tablename__ = "run_inputs"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("migration_runs.id", ondelete="CASCADE"), primary_key=True
    )
    request_id: Mapped[str] = mapped_column(String(36))
    action_id: Mapped[str] = mapped_column(String(36), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    answered_by: Mapped[str] = mapped_column(String(128))
    answered_at: Mapped[datetime]


class HealthProbe(Base):
    """One row (``id`` 1) that the database health probe (``server.storage.db.probe``) upserts:
    ``writes`` counts its committed writes, the proof that the database takes writes."""

    __tablename__ = "health_probe"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    writes: Mapped[int] = mapped_column(BigInteger)


class MigrationSpec(Base):
    """One immutable revision of an uploaded migration spec: ``source`` exactly as uploaded
    (``source_format`` "toml" or "json"), ``canonical`` the spec as canonical JSON (what agents
    receive) and ``sha256`` its hash. Revisions count from 1 per spec."""

    __tablename__ = "migration_specs"

    spec_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    source_format: Mapped[str] = mapped_column(String(8))
    canonical: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))


class AgentSpecVersion(Base):
    """What an agent's last check-in reported for one spec (``HostFacts.specs``): the revision
    it holds, the version its host detects as, or why detection failed (``error``)."""

    __tablename__ = "agent_spec_versions"

    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    spec_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    revision: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(Text)
    reported_at: Mapped[datetime]


class AgentTag(Base):
    """A server-side tag on an agent (``flagpost-server agent tag add``): ``name`` or
    ``key=value``; selectors match it beside the agent's own labels."""

    __tablename__ = "agent_tags"

    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class RolloutRow(Base):
    """A rollout (``server.services.rollouts``): a spec revision run on the hosts a selector
    picked, in cumulative waves (``wave_sizes``) with gates. ``current_wave`` is the wave in
    progress, ``wave_started_at`` when the scheduler started it (NULL: not yet),
    ``wave_finished_at`` when the previous wave ended (the soak counts from it);
    ``revert_wave`` the wave reverting (REVERTING); ``settled`` once it is terminal and no host
    of it is open any more (the scheduler stops looking at it)."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    spec_id: Mapped[str] = mapped_column(String(64))
    spec_revision: Mapped[int] = mapped_column(Integer)
    selector: Mapped[list[str]] = mapped_column(JSONType)
    wave_labels: Mapped[list[str]] = mapped_column(JSONType)
    wave_sizes: Mapped[list[int]] = mapped_column(JSONType)
    max_failure_rate: Mapped[float | None] = mapped_column(Float)
    max_failures: Mapped[int | None] = mapped_column(Integer)
    soak_seconds: Mapped[int] = mapped_column(Integer)
    wave_timeout_seconds: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[datetime | None]
    wave_finished_at: Mapped[datetime | None]
    override_wave: Mapped[int] = mapped_column(Integer, default=-1)
    revert_wave: Mapped[int] = mapped_column(Integer, default=-1)
    hosts_total: Mapped[int] = mapped_column(Integer)
    hosts_done: Mapped[int] = mapped_column(Integer, default=0)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime]

    __table_args__ = (Index(None, "created_at", "id"), Index(None, "settled"))


class RolloutHostRow(Base):
    """One host a rollout selected: its wave (deterministic: the rank is a hash of rollout id
    and agent id), its ``run_migration`` action once started, and what became of it."""

    __tablename__ = "rollout_hosts"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    hostname: Mapped[str] = mapped_column(String(255))
    wave: Mapped[int] = mapped_column(Integer)
    rank: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    action_id: Mapped[str] = mapped_column(String(36), default="")
    run_id: Mapped[str] = mapped_column(String(36), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    revert_state: Mapped[str] = mapped_column(String(16), default="")
    revert_action_id: Mapped[str] = mapped_column(String(36), default="")
    revert_run_id: Mapped[str] = mapped_column(String(36), default="")

    __table_args__ = (Index(None, "rollout_id", "wave", "state"),)


class RolloutTransitionRow(Base):
    """A recorded rollout state change: who, when, why (``from_state`` "" on creation)."""

    __tablename__ = "rollout_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)


class WebhookRow(Base):
    """A webhook (``server.services.webhooks``): a URL that receives the subscribed ``events``
    (a list of ``WebhookEvent`` values) as ``format`` ('json' | 'slack'), signed with its
    secret. ``secret`` is Fernet ciphertext under ``<state_dir>/inputs.key`` (the key that
    encrypts input answers), bound to the webhook id. ``runs_cursor_at``: the end of the last
    minute whose failed / waiting runs and agents gone offline (every aggregated event shares
    it) the dispatcher turned into deliveries for it."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSONType)
    format: Mapped[str] = mapped_column(String(16))
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    runs_cursor_at: Mapped[datetime]


class WebhookDeliveryRow(Base):
    """The webhook outbox: one event for one webhook. ``payload`` is the JSON text of the
    event ({event, at, text, path, data}; the body is rendered for the webhook's format at
    each attempt). Pending rows are due at ``next_attempt_at``; a claimed one is leased (its
    ``next_attempt_at`` pushed past the POST's timeout) so replicas never send it at once."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_latency_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index(None, "state", "next_attempt_at"),
        Index(None, "webhook_id", "id"),
    )
