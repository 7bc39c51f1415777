"""The server's one typed, frozen configuration object.

Loaded once per process: defaults, then a TOML file, then ``FLAGPOST_*`` environment variables,
then command-line overrides. This is the only module of the server that reads the environment,
and it reads it only through the mapping it is given.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from server.errors import ConfigError

ENV_PREFIX = "FLAGPOST_"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Every setting of ``flagpost-server``. Field names are the TOML keys; the environment
    variable for a field is ``FLAGPOST_`` + its upper-cased name (``FLAGPOST_DATABASE_URL``)."""

    database_url: str = "sqlite+aiosqlite:///flagpost.db"
    # Connections the server's engine keeps (plus as many again in overflow), and how long a
    # request waits for a free one before it is shed (RESOURCE_EXHAUSTED / 503 + retry hint).
    database_pool_size: int = 10
    database_pool_timeout_seconds: float = 10.0
    # The web's own pool (pages, API, live streams), so agents never wait behind web work.
    web_database_pool_size: int = 5
    web_database_pool_timeout_seconds: float = 3.0
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051  # 0 picks a free port (tests)
    web_host: str = "127.0.0.1"
    web_port: int = 8080  # 0 picks a free port (tests)
    # Web connections (server/web/listener.py): a request head must be complete within the
    # header timeout of the accept (later ones on a kept-alive connection within the keep-alive
    # timeout of the previous response), its body within the body timeout of the head. Writing
    # a response (a live stream) has no limit. Beyond web_max_connections (lowered to the
    # open-files limit minus a reserve for the database and gRPC) a new connection is closed.
    web_header_timeout_seconds: float = 10.0
    web_body_timeout_seconds: float = 30.0
    web_keepalive_timeout_seconds: float = 15.0
    web_max_connections: int = 512
    state_dir: Path = Path("flagpost-state")
    # Check-in cadence the server asks agents to keep, and how health is derived from it.
    checkin_interval_seconds: int = 60
    stale_after_intervals: int = 3  # stale after 3 missed intervals
    offline_after_intervals: int = 10
    # Ingest limits (each violation is a clean INVALID_ARGUMENT naming the limit).
    max_events_per_checkin: int = 500
    max_message_bytes: int = 4 * 1024 * 1024
    # Group commit: one writer batches many check-ins into one transaction.
    ingest_queue_max_events: int = 50_000
    ingest_batch_max_events: int = 2_000
    ingest_batch_max_wait_ms: int = 2
    # PostgreSQL: batches committed at once, each on its own connection (SQLite has one writer).
    ingest_writers: int = 2
    retry_after_ms: int = 2_000
    # Database health: probe every interval while idle or failing; a probe that takes
    # longer than the timeout counts as a failure. A SQLite write waits at most the busy timeout
    # for a lock another process holds, then fails with UNAVAILABLE (retryable).
    health_probe_interval_ms: int = 1_000
    health_probe_timeout_ms: int = 1_000
    sqlite_busy_timeout_ms: int = 5_000
    # Graceful shutdown: how long in-flight calls may take to finish before they are cancelled.
    shutdown_grace_seconds: int = 10
    # Runs and logs: per check-in limits (INVALID_ARGUMENT naming the limit) and how
    # long an action (run a migration, cancel a run) waits for its agent before it expires.
    max_run_updates_per_checkin: int = 500
    max_log_lines_per_checkin: int = 5_000
    action_ttl_seconds: int = 3_600
    # Retention: events, runs (with their steps and logs) older than retention_days or beyond the
    # per-agent caps are pruned (0 disables a limit) in transactions of at most
    # retention_batch_size rows, every retention_interval_minutes (0: only `flagpost-server
    # prune`). A run awaiting input is never pruned. After each transaction a prune waits
    # retention_pause_ratio times as long as it took (1.0: it holds the database at most half
    # the time, so ingest keeps going during a large prune; 0: back to back).
    retention_days: int = 30
    max_events_per_agent: int = 100_000
    max_runs_per_agent: int = 1_000
    retention_batch_size: int = 1_000
    retention_interval_minutes: int = 60
    retention_pause_ratio: float = 1.0
    # Rollouts (server/services/rollout_scheduler.py): every unsettled rollout is looked at
    # every rollout_tick_seconds (a gate breach halts it within about that long).
    rollout_tick_seconds: float = 1.0
    # Links in notifications (webhooks) point at this base URL of the web ("": the web's own
    # address, http(s)://web_host:web_port).
    public_url: str = ""
    # Webhooks (server/services/webhook_dispatcher.py): due deliveries are sent every
    # webhook_tick_seconds, each POST given webhook_timeout_seconds; a failed one is retried
    # after a random delay of up to min(cap, base * 2**(attempt-1)) seconds (full jitter), and
    # given up (state failed) after webhook_max_attempts attempts.
    webhook_tick_seconds: float = 1.0
    webhook_timeout_seconds: float = 5.0
    webhook_backoff_base_seconds: float = 10.0
    webhook_backoff_cap_seconds: float = 3_600.0
    webhook_max_attempts: int = 8
    # Web
    history_page_size: int = 50
    # Live streams (History and run streams together) open at once per web session and in all;
    # beyond them a new stream gets 429 with Retry-After.
    max_streams_per_session: int = 8
    max_streams_total: int = 1_000
    # TLS (server/tls.py): PEM files; both transports serve TLS when cert and key are set (""
    # = plain text, with a loud warning on a non-loopback address). A client CA makes gRPC
    # require agent client certificates that chain to it (mutual TLS); the web never asks.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Trust. The Ed25519 key that signs every action lives in
    # <state_dir>/signing-key.pem (created 0600 on first start); replicas sharing a PostgreSQL
    # must share that file. Agent credentials expire after credential_ttl_days (0: never) and
    # are rotated automatically at the first check-in within credential_rotate_before_days of
    # expiry (which must be less than credential_ttl_days); a credential issued without an
    # expiry (before expiry existed) is rotated at its next check-in when the TTL is > 0.
    # Enroll and login are rate limited per client address (login also per user name):
    # at most N attempts per minute, then RESOURCE_EXHAUSTED / 429 with a retry hint.
    credential_ttl_days: int = 90
    credential_rotate_before_days: int = 14
    enroll_rate_per_minute: int = 10
    login_rate_per_minute: int = 5
    # Failed logins per user name per minute from all addresses together; then 429 for that
    # name, from everywhere, until the oldest failure is a minute old (0: off).
    login_account_rate_per_minute: int = 10
    session_ttl_hours: int = 12
    # A file holding a bearer token Prometheus may use for /metrics ("" = logged-in users only).
    metrics_token_file: str = ""
    # Secret input: answers are kept encrypted with <state_dir>/inputs.key (Fernet,
    # created 0600 on first start) until the agent acknowledges them; each answer is at most
    # input_max_bytes.
    input_max_bytes: int = 4_096
    # Start-up: migrate the schema instead of refusing to start when it is behind.
    auto_upgrade: bool = False
    log_level: str = "INFO"
    log_sql: bool = False

    def __post_init__(self) -> None:
        """Refuse combinations of settings that cannot work (ConfigError naming them)."""
        ttl, before = self.credential_ttl_days, self.credential_rotate_before_days
        if ttl > 0 and before >= ttl:
            raise ConfigError(
                f"config credential_rotate_before_days ({before}) must be less than "
                f"credential_ttl_days ({ttl}): every new credential would be due for rotation "
                "at once, so agents would get a new one at every check-in"
            )
        for name in (
            "web_header_timeout_seconds",
            "web_body_timeout_seconds",
            "web_keepalive_timeout_seconds",
            "web_max_connections",
            "rollout_tick_seconds",
            "webhook_tick_seconds",
            "webhook_timeout_seconds",
            "webhook_backoff_base_seconds",
            "webhook_backoff_cap_seconds",
            "webhook_max_attempts",
            "ingest_writers",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config {name} must be greater than 0")
        if self.retention_pause_ratio < 0:
            raise ConfigError("config retention_pause_ratio must be 0 or more")
        if self.webhook_backoff_cap_seconds < self.webhook_backoff_base_seconds:
            raise ConfigError(
                "config webhook_backoff_cap_seconds must be at least webhook_backoff_base_seconds"
            )
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"config public_url ({self.public_url!r}) must start with http:// or https://"
            )

    @property
    def web_base_url(self) -> str:
        """Where people open the web: ``public_url``, else the web's own address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert_file else "http"
        return f"{scheme}://{self.web_host}:{self.web_port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _coerce(name: str, value: Any, target: Any) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if target is int:
            if isinstance(value, bool):
                raise ValueError("a boolean is not an integer")
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError("a boolean is not a number")
            return float(value)
        if target is Path:
            return Path(value)
        if target is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {name}: {exc}") from exc
    raise ConfigError(f"config {name}: unsupported type {target!r}")


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Build the config: defaults < TOML file < environment < overrides (command-line flags).

    ``env`` defaults to ``os.environ``; tests pass their own mapping. ``None`` values in
    ``overrides`` mean "flag not given" and are skipped. Unknown keys are an error, not ignored.
    """
    environ = os.environ if env is None else env
    hints = get_type_hints(ServerConfig)
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    values: dict[str, Any] = {}

    config_path = path
    if config_path is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_path = Path(environ[ENV_PREFIX + "CONFIG"])
    if config_path is not None:
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_path}: {exc}") from exc
        section = data.get("server", data)
        for key, value in section.items():
            if key not in fields:
                raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
            values[key] = _coerce(key, value, hints[key])

    for name in fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = _coerce(name, env_value, hints[name])

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value, hints[key])

    return ServerConfig(**values)
