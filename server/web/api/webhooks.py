"""The webhooks JSON API (admin only): list, add, remove, and a webhook's delivery log
(``server.services.webhooks``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import app_keys
from server.errors import InvalidArgument
from server.services import webhooks as webhooks_service
from server.web.api.webhook_shapes import (
    WebhookRemoved,
    delivery_list_json,
    webhook_created_json,
    webhook_list_json,
)
from server.web.auth import actor_name
from server.web.request import json_body, parse_int, path_id, single
from server.web.sessions import web_sessions

MAX_EVENTS = 16


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument("must be a string", field=name)
    return value


def _events(body: dict[str, Any]) -> list[str]:
    value = body.get("events")
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_EVENTS
        or not all(isinstance(item, str) for item in value)
    ):
        raise InvalidArgument(f"must be a list of 1 to {MAX_EVENTS} event names", field="events")
    return value


async def list_webhooks(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/webhooks``: every webhook (never a secret), oldest first."""
    found = await webhooks_service.list_webhooks(web_sessions(request.app))
    return web.json_response(webhook_list_json(found))


async def add_webhook(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/webhooks``: 201 with the new webhook and its secret (shown only here)."""
    body = await json_body(request, allow_empty=False)
    url = _text(body, "url")
    if not url:
        raise InvalidArgument("is required (an http:// or https:// URL)", field="url")
    events = _events(body)
    created, secret = await webhooks_service.add_webhook(
        web_sessions(request.app),
        request.app[app_keys.WEBHOOK_SECRETS],
        url,
        events,
        actor_name(request),
        fmt=_text(body, "format") or "json",
        secret=_text(body, "secret"),
    )
    return web.json_response(webhook_created_json(created, secret), status=201)


async def remove_webhook(request: web.Request) -> web.StreamResponse:
    """``DELETE /api/v1/webhooks/{webhook_id}``: the webhook and its delivery log."""
    webhook_id = path_id(request, "webhook_id")
    await webhooks_service.remove_webhook(web_sessions(request.app), webhook_id)
    return web.json_response(WebhookRemoved(id=webhook_id.strip().lower(), removed=True))


async def deliveries(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/webhooks/{webhook_id}/deliveries?limit=``: newest first."""
    webhook_id = path_id(request, "webhook_id")
    raw = single(request.query, "limit", 8)
    limit = parse_int("limit", raw, 1, webhooks_service.MAX_DELIVERIES) if raw else 50
    webhook, log = await webhooks_service.deliveries(web_sessions(request.app), webhook_id, limit)
    return web.json_response(delivery_list_json(webhook, log))
