"""Typed aiohttp application state: every ``web.AppKey`` the server uses, declared once."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.services import Services
from server.services.bus import EventBus
from server.services.health import DatabaseHealth
from server.services.rollout_scheduler import RolloutScheduler
from server.services.webhook_dispatcher import WebhookDispatcher
from server.services.webhook_secrets import SecretBox
from server.signing import ActionSigner


@dataclass
class BoundPorts:
    """Ports actually bound (differ from the config when it asks for port 0)."""

    grpc: int = 0
    web: int = 0
    extra: dict[str, int] = field(default_factory=dict)


CONFIG = web.AppKey("config", ServerConfig)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker[AsyncSession])
# The web's own engine and sessions (server.storage.db.create_web_engine): web handlers use
# these, gRPC and ingest the two above.
WEB_ENGINE = web.AppKey("web_engine", AsyncEngine)
WEB_SESSIONS = web.AppKey("web_sessions", async_sessionmaker[AsyncSession])
PORTS = web.AppKey("ports", BoundPorts)
SERVICES = web.AppKey("services", Services)
METRICS = web.AppKey("metrics", ServerMetrics)  # per app: tests run several servers at once
HEALTH = web.AppKey("health", DatabaseHealth)  # is the database reachable? (/healthz, gRPC)
BUS = web.AppKey("bus", EventBus)
SIGNER = web.AppKey("signer", ActionSigner)  # the server's Ed25519 action-signing key
ROLLOUTS = web.AppKey(
    "rollouts", RolloutScheduler
)  # the rollout scheduler (wake it after a change)
WEBHOOKS = web.AppKey("webhooks", WebhookDispatcher)  # sends the webhook outbox
WEBHOOK_SECRETS = web.AppKey("webhook_secrets", SecretBox)  # encrypts webhook secrets
