"""The webhook dispatcher: the background job that empties the outbox.

Every ``webhook_tick_seconds`` it (1) turns the minutes that ended into ``run.*`` and
``agent.offline`` deliveries (``webhook_events.aggregate``), (2) claims the due pending
deliveries (on PostgreSQL ``FOR UPDATE SKIP LOCKED``; each claimed row is leased, its
``next_attempt_at`` pushed ``webhook_timeout_seconds`` + :data:`LEASE_MARGIN_SECONDS` ahead, in
the claiming transaction), (3) POSTs them at once, signed (``server.webhook_signature``), and
(4) records each attempt: the status, latency and error, ``attempts`` + 1, and then delivered
(2xx), the next attempt after :func:`backoff_seconds` (exponential backoff with full jitter), or
failed after ``webhook_max_attempts``; once an hour, delivered and failed rows older than
``retention_days`` are deleted. Deliveries are rows: pending ones survive a restart, and one
whose POST a crash cut short is sent again when its lease ends (at least once: receivers
dedupe by the ``Flagpost-Delivery`` header).

The HTTP client is given (``send``): this layer imports no aiohttp (``server.webhook_sender``
is the real one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server import __version__
from server.config import ServerConfig
from server.domain import DeliveryState
from server.errors import FlagpostError
from server.services.health import log_tick_failure
from server.services.webhook_events import aggregate, render
from server.services.webhook_secrets import SecretBox
from server.storage import webhooks as webhooks_db
from server.webhook_signature import HEADER, sign

log = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 30.0
PRUNE_EVERY = timedelta(hours=1)  # delivered / failed rows older than retention_days go
BATCH = 50
MAX_ERROR = 500


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one POST got: the status (None: no answer), an error text ("" on 2xx)."""

    status: int | None
    error: str
    latency_ms: int

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


Send = Callable[[str, bytes, Mapping[str, str], float], Awaitable[SendResult]]


def backoff_seconds(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """The delay before retrying after failed attempt number ``attempt`` (1-based): uniformly
    random in [0, min(cap, base * 2**(attempt-1))] ("full jitter")."""
    ceiling: float = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return float(rand() * ceiling)


class WebhookDispatcher:
    """The background job (see the module docstring). ``run_once`` is one tick."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        config: ServerConfig,
        box: SecretBox,
        send: Send,
    ) -> None:
        self._sessions = sessions
        self._config = config
        self._box = box
        self._send = send
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._pruned_at: datetime | None = None
        self.sent = 0
        self.ticks = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flagpost-webhooks"
            )

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the tick in flight (its POSTs are recorded), waiting at most a POST's
        timeout; then cancel (a cut-short delivery is sent again when its lease ends)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, self._config.webhook_timeout_seconds + 2)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self, now: datetime | None = None) -> int:
        """One tick; returns how many deliveries were attempted."""
        now = now or datetime.now(UTC)
        await aggregate(self._sessions, self._config, now)
        await self._prune(now)
        lease = now + timedelta(seconds=self._config.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
        async with self._sessions() as session, session.begin():
            claimed = await webhooks_db.claim_due(session, now, lease, BATCH)
        if claimed:
            await asyncio.gather(*(self._deliver(c) for c in claimed))
        self.ticks += 1
        return len(claimed)

    async def _prune(self, now: datetime) -> None:
        days = self._config.retention_days
        if days <= 0 or (self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY):
            return
        self._pruned_at = now
        batch = self._config.retention_batch_size
        while True:
            async with self._sessions() as session, session.begin():
                deleted = await webhooks_db.prune_finished(
                    session, now - timedelta(days=days), batch
                )
            if deleted < batch:
                return

    async def _deliver(self, claimed: webhooks_db.Claimed) -> None:
        config = self._config
        attempt = claimed.attempts + 1
        try:
            secret = self._box.decrypt(claimed.webhook_id, claimed.secret)
        except FlagpostError as exc:
            result = SendResult(None, exc.message, 0)
        else:
            body = render(claimed.payload, claimed.format, config.web_base_url)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"Flagpost-Webhooks/{__version__}",
                "Flagpost-Event": claimed.event,
                "Flagpost-Delivery": str(claimed.id),
                HEADER: sign(secret, body),
            }
            try:
                result = await self._send(
                    claimed.url, body, headers, config.webhook_timeout_seconds
                )
            except Exception as exc:  # a bug in the client: still an attempt, recorded
                log.exception("webhook %s: delivery %s", claimed.webhook_id, claimed.id)
                result = SendResult(None, f"{type(exc).__name__}: {exc}", 0)
        now = datetime.now(UTC)
        values: dict[str, object] = {
            "attempts": attempt,
            "last_status": result.status,
            "last_latency_ms": result.latency_ms,
            "last_error": result.error[:MAX_ERROR],
        }
        if result.ok:
            values.update(
                state=DeliveryState.DELIVERED.value, delivered_at=now, next_attempt_at=None
            )
            self.sent += 1
        elif attempt >= config.webhook_max_attempts:
            values.update(state=DeliveryState.FAILED.value, next_attempt_at=None)
            log.warning(
                "webhook %s: delivery %s given up after %d attempts: %s",
                claimed.webhook_id,
                claimed.id,
                attempt,
                result.error,
            )
        else:
            delay = backoff_seconds(
                attempt, config.webhook_backoff_base_seconds, config.webhook_backoff_cap_seconds
            )
            values["next_attempt_at"] = now + timedelta(seconds=delay)
        async with self._sessions() as session, session.begin():
            await webhooks_db.record_attempt(session, claimed.id, **values)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except Exception as exc:  # keep the job alive; the next tick tries again
                log_tick_failure(log, "webhooks", exc)
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.webhook_tick_seconds)
            self._wake.clear()
