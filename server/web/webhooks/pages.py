"""HTML handlers of ``/webhooks`` (admin only): every webhook with its newest deliveries
(state, status, latency, attempts, next attempt, last error) and the add form; the add and
remove forms are same-origin posts (admin session + CSRF token) that redirect (303) back. A
new webhook's secret is shown once, on the page the add answers with (200, not a redirect:
the secret is never put in a URL)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from server import app_keys
from server.domain import Webhook, WebhookDelivery, WebhookEvent
from server.errors import InvalidArgument, NotFound
from server.services import webhooks as webhooks_service
from server.web.auth import actor_name
from server.web.format import display_time, relative_time
from server.web.request import path_id, single
from server.web.sessions import web_sessions
from server.web.templates import render_page

DELIVERIES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    event: str
    state: str
    attempts: int
    status: str
    latency: str
    next_attempt: str
    created: str
    error: str


@dataclass(frozen=True, slots=True)
class WebhookView:
    id: str
    url: str
    events: str
    format: str
    created: str
    created_by: str
    deliveries: tuple[DeliveryRow, ...]


@dataclass(frozen=True, slots=True)
class AddForm:
    url: str = ""
    events: tuple[str, ...] = ()
    format: str = "json"
    error: str = ""


@dataclass(frozen=True, slots=True)
class WebhooksPage:
    webhooks: tuple[WebhookView, ...]
    all_events: tuple[str, ...]
    form: AddForm
    notice: str = ""
    new_secret: str = ""
    new_id: str = ""


def _row(d: WebhookDelivery, now: datetime) -> DeliveryRow:
    return DeliveryRow(
        id=d.id,
        event=d.event.value,
        state=d.state.value,
        attempts=d.attempts,
        status="—" if d.last_status is None else str(d.last_status),
        latency="—" if d.last_latency_ms is None else f"{d.last_latency_ms} ms",
        next_attempt="—" if d.next_attempt_at is None else display_time(d.next_attempt_at),
        created=relative_time(d.created_at, now),
        error=d.last_error,
    )


def _view(w: Webhook, log: list[WebhookDelivery], now: datetime) -> WebhookView:
    return WebhookView(
        id=w.id,
        url=w.url,
        events=", ".join(e.value for e in w.events),
        format=w.format.value,
        created=display_time(w.created_at),
        created_by=w.created_by,
        deliveries=tuple(_row(d, now) for d in log),
    )


async def _render(
    request: web.Request,
    form: AddForm | None = None,
    notice: str = "",
    created: tuple[Webhook, str] | None = None,
    status: int = 200,
) -> web.Response:
    sessions = web_sessions(request.app)
    found = await webhooks_service.list_webhooks(sessions)
    logs = await webhooks_service.deliveries_of(sessions, found, DELIVERIES_SHOWN)
    now = datetime.now(UTC)
    page = WebhooksPage(
        webhooks=tuple(_view(w, logs.get(w.id, []), now) for w in found),
        all_events=tuple(e.value for e in WebhookEvent),
        form=form or AddForm(),
        notice=notice,
        new_secret=created[1] if created else "",
        new_id=created[0].id if created else "",
    )
    response = await render_page("webhooks.html", request, {"page": page})
    response.set_status(status)
    response.headers["Cache-Control"] = "no-store"
    return response


async def webhooks(request: web.Request) -> web.StreamResponse:
    """``GET /webhooks``."""
    notice = "Webhook removed." if single(request.query, "removed", 8) else ""
    return await _render(request, notice=notice)


async def add_webhook(request: web.Request) -> web.StreamResponse:
    """``POST /webhooks`` (the add form): the page again, with the new secret shown once, or
    with the form kept and the error (400)."""
    form = await request.post()
    url = form.get("url")
    fmt = form.get("format")
    events = tuple(str(e) for e in form.getall("events", []) if isinstance(e, str))
    kept = AddForm(
        url=url if isinstance(url, str) else "",
        events=events,
        format=fmt if isinstance(fmt, str) else "json",
    )
    try:
        created = await webhooks_service.add_webhook(
            web_sessions(request.app),
            request.app[app_keys.WEBHOOK_SECRETS],
            kept.url,
            list(events),
            actor_name(request),
            fmt=kept.format,
        )
    except InvalidArgument as exc:
        error = AddForm(kept.url, kept.events, kept.format, exc.message)
        return await _render(request, error, status=400)
    return await _render(request, notice="Webhook added.", created=created)


async def remove_webhook(request: web.Request) -> web.StreamResponse:
    """``POST /webhooks/{webhook_id}/remove``."""
    webhook_id = path_id(request, "webhook_id")
    with contextlib.suppress(NotFound):  # already gone: the page shows what is left
        await webhooks_service.remove_webhook(web_sessions(request.app), webhook_id)
    raise web.HTTPSeeOther("/webhooks?removed=1")
