"""SQL of webhooks (``webhooks``, ``webhook_deliveries``): what ``server.services.webhooks``,
``server.services.webhook_events`` and the dispatcher read and write. Domain dataclasses out.

Claiming due deliveries (:func:`claim_due`) takes them with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL and leases them in the same transaction (``next_attempt_at`` pushed past the
POST's timeout, only where it is still due: a compare-and-set, what guards SQLite), so
replicas sharing the database never send one delivery at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import (
    DeliveryState,
    RunState,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
    WebhookFormat,
)
from server.storage.models import Agent, MigrationRun, WebhookDeliveryRow, WebhookRow

FAILED_RUN_STATES = (RunState.FAILED.value, RunState.PARTIAL.value)


def _webhook(row: WebhookRow) -> Webhook:
    return Webhook(
        id=row.id,
        url=row.url,
        events=tuple(WebhookEvent(e) for e in row.events if e in WebhookEvent._value2member_map_),
        format=WebhookFormat(row.format),
        created_by=row.created_by,
        created_at=row.created_at,
        enabled=row.enabled,
    )


def _delivery(row: WebhookDeliveryRow) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        webhook_id=row.webhook_id,
        event=WebhookEvent(row.event),
        payload=json.loads(row.payload),
        state=DeliveryState(row.state),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_status=row.last_status,
        last_error=row.last_error,
        last_latency_ms=row.last_latency_ms,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


def _is_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def insert_webhook(session: AsyncSession, values: dict[str, Any]) -> None:
    await session.execute(insert(WebhookRow).values(**values))


async def list_webhooks(session: AsyncSession) -> list[Webhook]:
    """Every webhook, oldest first."""
    rows = await session.execute(select(WebhookRow).order_by(WebhookRow.created_at, WebhookRow.id))
    return [_webhook(row) for row in rows.scalars()]


async def get_webhook(session: AsyncSession, webhook_id: str) -> Webhook | None:
    row = await session.get(WebhookRow, webhook_id)
    return None if row is None else _webhook(row)


async def delete_webhook(session: AsyncSession, webhook_id: str) -> bool:
    """Delete the webhook and its deliveries; False when there was none."""
    await session.execute(
        delete(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
    )
    result = await session.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id))
    return bool(getattr(result, "rowcount", 0))


async def subscribers(session: AsyncSession, event: WebhookEvent) -> list[str]:
    """Ids of the enabled webhooks subscribed to ``event`` (few rows: filtered here)."""
    rows = await session.execute(
        select(WebhookRow.id, WebhookRow.events).where(WebhookRow.enabled.is_(True))
    )
    return [webhook_id for webhook_id, events in rows if event.value in events]


async def insert_deliveries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(WebhookDeliveryRow), list(rows))


async def list_deliveries(
    session: AsyncSession, webhook_id: str, limit: int
) -> list[WebhookDelivery]:
    """The webhook's deliveries, newest first."""
    rows = await session.execute(
        select(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.webhook_id == webhook_id)
        .order_by(WebhookDeliveryRow.id.desc())
        .limit(limit)
    )
    return [_delivery(row) for row in rows.scalars()]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A due delivery, leased to this process, with what sending it needs."""

    id: int
    webhook_id: str
    event: str
    payload: dict[str, Any]
    attempts: int  # before this attempt
    url: str
    format: WebhookFormat
    secret: bytes  # ciphertext


async def claim_due(
    session: AsyncSession, now: datetime, lease_until: datetime, limit: int
) -> list[Claimed]:
    """Up to ``limit`` pending deliveries due by ``now`` of enabled webhooks, oldest due
    first, leased until ``lease_until`` (rows another transaction holds are skipped)."""
    ids_query = (
        select(WebhookDeliveryRow.id)
        .join(WebhookRow, WebhookRow.id == WebhookDeliveryRow.webhook_id)
        .where(
            WebhookDeliveryRow.state == DeliveryState.PENDING.value,
            WebhookDeliveryRow.next_attempt_at <= now,
            WebhookRow.enabled.is_(True),
        )
        .order_by(WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.id)
        .limit(limit)
    )
    if _is_postgresql(session):
        ids_query = ids_query.with_for_update(skip_locked=True, of=WebhookDeliveryRow)
    ids = list((await session.execute(ids_query)).scalars())
    if not ids:
        return []
    # The lease is a compare-and-set: on SQLite the SELECT above holds no lock, so another
    # process may have leased some of these rows since; only the rows still due are taken.
    leased = await session.execute(
        update(WebhookDeliveryRow)
        .where(
            WebhookDeliveryRow.id.in_(ids),
            WebhookDeliveryRow.state == DeliveryState.PENDING.value,
            WebhookDeliveryRow.next_attempt_at <= now,
        )
        .values(next_attempt_at=lease_until)
        .returning(WebhookDeliveryRow.id)
    )
    ids = list(leased.scalars())
    if not ids:
        return []
    rows = await session.execute(
        select(
            WebhookDeliveryRow.id,
            WebhookDeliveryRow.webhook_id,
            WebhookDeliveryRow.event,
            WebhookDeliveryRow.payload,
            WebhookDeliveryRow.attempts,
            WebhookRow.url,
            WebhookRow.format,
            WebhookRow.secret,
        )
        .join(WebhookRow, WebhookRow.id == WebhookDeliveryRow.webhook_id)
        .where(WebhookDeliveryRow.id.in_(ids))
        .order_by(WebhookDeliveryRow.id)
    )
    return [
        Claimed(
            id=r.id,
            webhook_id=r.webhook_id,
            event=r.event,
            payload=json.loads(r.payload),
            attempts=r.attempts,
            url=r.url,
            format=WebhookFormat(r.format),
            secret=r.secret,
        )
        for r in rows
    ]


async def record_attempt(session: AsyncSession, delivery_id: int, **values: Any) -> None:
    """Set the outcome columns of one delivery after an attempt."""
    await session.execute(
        update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id).values(**values)
    )


AGGREGATED_EVENTS = (
    WebhookEvent.RUN_FAILED,
    WebhookEvent.RUN_WAITING_INPUT,
    WebhookEvent.AGENT_OFFLINE,
)


@dataclass(frozen=True, slots=True)
class RunCursor:
    """A webhook subscribed to aggregated events (run events, ``agent.offline``), and how far
    its aggregation got (``webhooks.runs_cursor_at``, shared by all of them)."""

    webhook_id: str
    events: tuple[WebhookEvent, ...]
    cursor: datetime


async def run_cursors(session: AsyncSession) -> list[RunCursor]:
    """The enabled webhooks subscribed to an aggregated event, with their cursors."""
    rows = await session.execute(
        select(WebhookRow.id, WebhookRow.events, WebhookRow.runs_cursor_at).where(
            WebhookRow.enabled.is_(True)
        )
    )
    out = []
    for webhook_id, events, cursor in rows:
        wanted = tuple(e for e in AGGREGATED_EVENTS if e.value in events)
        if wanted:
            out.append(RunCursor(webhook_id, wanted, cursor))
    return out


async def advance_cursor(
    session: AsyncSession, webhook_id: str, old: datetime, new: datetime
) -> bool:
    """Move the webhook's run cursor from ``old`` to ``new`` (compare-and-set): False when
    another transaction moved it first (then this one must roll back)."""
    query = (
        update(WebhookRow)
        .where(WebhookRow.id == webhook_id, WebhookRow.runs_cursor_at == old)
        .values(runs_cursor_at=new)
    )
    if _is_postgresql(session):
        locked = await session.execute(
            select(WebhookRow.id)
            .where(WebhookRow.id == webhook_id)
            .with_for_update(skip_locked=True)
        )
        if locked.scalar() is None:
            return False
    result = await session.execute(query)
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True, slots=True)
class RunNotice:
    """A run that failed or began waiting for input, at ``at`` (server time)."""

    run_id: str
    agent_id: str
    hostname: str
    migration_id: str
    state: str
    error: str
    at: datetime


async def runs_between(
    session: AsyncSession, event: WebhookEvent, since: datetime, until: datetime, limit: int
) -> list[RunNotice]:
    """Runs that failed (FAILED or PARTIAL, by the time the server stored it) or asked for
    input (by ``input_requested_at``) in ``[since, until)``, oldest first."""
    at: Any
    if event == WebhookEvent.RUN_FAILED:
        at = MigrationRun.updated_at
        condition = MigrationRun.state.in_(FAILED_RUN_STATES)
    else:
        at = MigrationRun.input_requested_at
        condition = MigrationRun.input_requested_at.is_not(None)
    rows = await session.execute(
        select(
            MigrationRun.id,
            MigrationRun.agent_id,
            Agent.hostname,
            MigrationRun.migration_id,
            MigrationRun.state,
            MigrationRun.error_message,
            at,
        )
        .join(Agent, Agent.id == MigrationRun.agent_id)
        .where(condition, at >= since, at < until)
        .order_by(at, MigrationRun.id)
        .limit(limit)
    )
    return [RunNotice(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class OfflineNotice:
    """An agent that went offline at ``at`` (its last check-in + the offline window) and has
    not checked in since."""

    agent_id: str
    hostname: str
    last_checkin_at: datetime
    at: datetime


async def agents_offline_between(
    session: AsyncSession, window: timedelta, since: datetime, until: datetime, limit: int
) -> list[OfflineNotice]:
    """Agents (not revoked) whose ``last_checkin_at + window`` is in ``[since, until)``, so
    they crossed the offline threshold then and have not checked in since; oldest first."""
    rows = await session.execute(
        select(Agent.id, Agent.hostname, Agent.last_checkin_at)
        .where(
            Agent.revoked.is_(False),
            Agent.last_checkin_at >= since - window,
            Agent.last_checkin_at < until - window,
        )
        .order_by(Agent.last_checkin_at, Agent.id)
        .limit(limit)
    )
    return [
        OfflineNotice(agent_id, hostname, last, last + window)
        for agent_id, hostname, last in rows
        if last is not None  # never checked in: the WHERE already leaves these out
    ]


async def prune_finished(session: AsyncSession, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` delivered or failed deliveries created before ``before``."""
    ids = (
        select(WebhookDeliveryRow.id)
        .where(
            WebhookDeliveryRow.state != DeliveryState.PENDING.value,
            WebhookDeliveryRow.created_at < before,
        )
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.id.in_(ids)))
    return int(getattr(result, "rowcount", 0) or 0)
