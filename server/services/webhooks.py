"""Webhooks: add (URL checked, secret generated or given, stored encrypted), list, remove,
and read a webhook's delivery log. Each operation is one transaction.

A webhook's URL is untrusted input: only ``http`` and ``https``, a host, no user name or
password in it (it is shown on pages and in the CLI), at most :data:`MAX_URL` characters.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.domain import Webhook, WebhookDelivery, WebhookEvent, WebhookFormat
from server.errors import InvalidArgument, NotFound
from server.services.health import unavailable_on_outage
from server.services.runs import requester
from server.services.webhook_secrets import SecretBox, check_secret, generate_secret
from server.storage import webhooks as webhooks_db

MAX_URL = 2048
MAX_DELIVERIES = 200
EVENT_NAMES = ", ".join(e.value for e in WebhookEvent)


def check_url(url: str) -> str:
    """The URL stripped: InvalidArgument (field ``url``) unless an http(s) URL with a host and
    no credentials."""
    url = url.strip()
    if not url or len(url) > MAX_URL or not url.isprintable() or " " in url:
        raise InvalidArgument(
            f"must be an http(s) URL of at most {MAX_URL} characters", field="url"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"is not a valid URL: {exc}", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument(
            f"must start with http:// or https:// (not {parts.scheme or 'no scheme'})",
            field="url",
        )
    if not parts.hostname:
        raise InvalidArgument("has no host", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(
            "must not hold a user name or password (the signature authenticates the server)",
            field="url",
        )
    if port == 0:
        raise InvalidArgument("has port 0", field="url")
    return url


def check_events(events: Sequence[str]) -> tuple[WebhookEvent, ...]:
    """The events, deduplicated in order: InvalidArgument (field ``events``) when empty or
    one is unknown."""
    chosen: list[WebhookEvent] = []
    for raw in events:
        name = raw.strip()
        if not name:
            continue
        try:
            event = WebhookEvent(name)
        except ValueError:
            raise InvalidArgument(
                f"unknown event {name[:40]!r} (one of: {EVENT_NAMES})", field="events"
            ) from None
        if event not in chosen:
            chosen.append(event)
    if not chosen:
        raise InvalidArgument(f"name at least one event (of: {EVENT_NAMES})", field="events")
    return tuple(chosen)


def check_format(fmt: str) -> WebhookFormat:
    try:
        return WebhookFormat(fmt.strip().lower())
    except ValueError:
        raise InvalidArgument("must be one of: json, slack", field="format") from None


def _webhook_id(webhook_id: str) -> str:
    try:
        return str(uuid.UUID(webhook_id.strip()))
    except ValueError:
        raise NotFound(
            f"no webhook {webhook_id[:64]} (see: flagpost-server webhook list)"
        ) from None


async def add_webhook(
    sessions: async_sessionmaker[AsyncSession],
    box: SecretBox,
    url: str,
    events: Sequence[str],
    by: str,
    *,
    fmt: str = WebhookFormat.JSON.value,
    secret: str | None = None,
) -> tuple[Webhook, str]:
    """A new enabled webhook and its secret (generated unless given; shown only now)."""
    url = check_url(url)
    chosen = check_events(events)
    form = check_format(fmt)
    by = requester(by)
    secret = generate_secret() if secret is None else check_secret(secret)
    webhook_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with unavailable_on_outage("add webhook"):
        async with sessions() as session, session.begin():
            await webhooks_db.insert_webhook(
                session,
                {
                    "id": webhook_id,
                    "url": url,
                    "events": [e.value for e in chosen],
                    "format": form.value,
                    "secret": box.encrypt(webhook_id, secret),
                    "created_by": by,
                    "created_at": now,
                    "enabled": True,
                    "runs_cursor_at": now,
                },
            )
            created = await webhooks_db.get_webhook(session, webhook_id)
    assert created is not None
    return created, secret


async def list_webhooks(sessions: async_sessionmaker[AsyncSession]) -> list[Webhook]:
    with unavailable_on_outage("list webhooks"):
        async with sessions() as session:
            return await webhooks_db.list_webhooks(session)


async def remove_webhook(sessions: async_sessionmaker[AsyncSession], webhook_id: str) -> None:
    """Delete the webhook and its delivery log; NotFound when unknown."""
    webhook_id = _webhook_id(webhook_id)
    with unavailable_on_outage("remove webhook"):
        async with sessions() as session, session.begin():
            if not await webhooks_db.delete_webhook(session, webhook_id):
                raise NotFound(f"no webhook {webhook_id} (see: flagpost-server webhook list)")


async def deliveries(
    sessions: async_sessionmaker[AsyncSession], webhook_id: str, limit: int = 50
) -> tuple[Webhook, list[WebhookDelivery]]:
    """The webhook and its newest ``limit`` deliveries; NotFound when unknown."""
    webhook_id = _webhook_id(webhook_id)
    if not 1 <= limit <= MAX_DELIVERIES:
        raise InvalidArgument(f"must be between 1 and {MAX_DELIVERIES}", field="limit")
    with unavailable_on_outage("webhook deliveries"):
        async with sessions() as session:
            webhook = await webhooks_db.get_webhook(session, webhook_id)
            if webhook is None:
                raise NotFound(f"no webhook {webhook_id} (see: flagpost-server webhook list)")
            return webhook, await webhooks_db.list_deliveries(session, webhook_id, limit)


async def deliveries_of(
    sessions: async_sessionmaker[AsyncSession], webhooks: Sequence[Webhook], limit: int
) -> dict[str, list[WebhookDelivery]]:
    """The newest ``limit`` deliveries of each webhook (the /webhooks page)."""
    with unavailable_on_outage("webhook deliveries"):
        async with sessions() as session:
            return {w.id: await webhooks_db.list_deliveries(session, w.id, limit) for w in webhooks}
