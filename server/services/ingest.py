"""Group-commit ingest: many check-ins, one transaction.

Transports call ``IngestWriter.submit``; it enqueues the check-in on a bounded queue (the bound
counts events, ``ingest_queue_max_events``) and waits. One writer task takes everything queued,
up to ``ingest_batch_max_events`` or ``ingest_batch_max_wait_ms``, inserts the events (duplicates
by ``event_id`` ignored) and updates the agents' facts and ``last_checkin_at`` in ONE
transaction, commits, and only then resolves each check-in's future: an acknowledgement always
means "durably stored".

Failure handling: a full queue raises ResourceExhausted at once (clients retry after
``retry_after_ms``); a database error fails that batch's check-ins with Unavailable (retryable,
nothing acknowledged) and the writer carries on with the next batch. ``stop()`` refuses new
check-ins, drains and commits everything already queued, then ends the task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import HostFacts, NewEvent
from server.errors import ResourceExhausted, Unavailable
from server.storage import agents as agents_db
from server.storage import events as events_db

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one check-in's commit did."""

    stored: int  # events newly inserted
    duplicates: int  # events already stored (or repeated within the batch)


@dataclass(slots=True)
class _Checkin:
    agent_id: str
    facts: HostFacts | None
    events: Sequence[NewEvent]
    future: asyncio.Future[IngestResult]
    cost: int = field(init=False)

    def __post_init__(self) -> None:
        self.cost = max(1, len(self.events))  # an empty check-in still takes a slot


_STOP = object()


class IngestWriter:
    """The single writer. Counters are plain attributes (read them for metrics)."""

    def __init__(self, config: ServerConfig, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._config = config
        self._sessions = sessions
        self._queue: asyncio.Queue[_Checkin | object] = asyncio.Queue()
        self._queued_cost = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Counters
        self.checkins = 0  # check-ins committed and acknowledged
        self.events_stored = 0  # rows inserted
        self.duplicates = 0  # events ignored as already stored
        self.rejected = 0  # check-ins refused (queue full, stopping) or failed (database error)
        self.batches = 0  # transactions committed
        self.failed_batches = 0

    @property
    def queued_events(self) -> int:
        """Events (at least one per check-in) waiting for the writer."""
        return self._queued_cost

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the writer task on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flagpost-ingest-writer"
            )

    async def stop(self) -> None:
        """Refuse new check-ins, commit everything queued, then end the writer (idempotent)."""
        if self._closing:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._closing = True
        if self._task is None:
            return
        self._queue.put_nowait(_STOP)
        await asyncio.shield(self._task)

    async def submit(
        self, agent_id: str, facts: HostFacts | None, events: Sequence[NewEvent]
    ) -> IngestResult:
        """Queue one validated check-in and wait until it is committed.

        Raises ResourceExhausted when the queue is full, Unavailable when the server is stopping
        or the database failed (in both cases nothing of this check-in was stored)."""
        if self._closing or not self.running:
            self.rejected += 1
            raise Unavailable("the server is shutting down; retry shortly")
        item = _Checkin(agent_id, facts, events, asyncio.get_running_loop().create_future())
        if self._queued_cost + item.cost > self._config.ingest_queue_max_events:
            self.rejected += 1
            raise ResourceExhausted(
                "the server is busy; retry later", retry_after_ms=self._config.retry_after_ms
            )
        self._queued_cost += item.cost
        self._queue.put_nowait(item)
        # If the caller goes away its future is cancelled, but the check-in still commits.
        return await item.future

    async def _run(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Checkin)
            batch, stop = await self._collect(first)
            try:
                await self._commit(batch)
            finally:
                self._queued_cost -= sum(item.cost for item in batch)

    async def _collect(self, first: _Checkin) -> tuple[list[_Checkin], bool]:
        """Gather more check-ins until the batch is full or the wait is over."""
        loop = asyncio.get_running_loop()
        batch = [first]
        size = first.cost
        deadline = loop.time() + self._config.ingest_batch_max_wait_ms / 1000
        while size < self._config.ingest_batch_max_events:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Checkin)
            batch.append(item)
            size += item.cost
        return batch, False

    async def _commit(self, batch: list[_Checkin]) -> None:
        unique: dict[str, NewEvent] = {}
        for item in batch:
            for event in item.events:
                unique.setdefault(event.event_id, event)
        now = datetime.now(UTC)
        facts: dict[str, HostFacts | None] = {}
        for item in batch:  # the newest facts of each agent win; a check-in without keeps them
            if item.facts is not None or item.agent_id not in facts:
                facts[item.agent_id] = item.facts
        updates = [agents_db.CheckinUpdate(a, now, f) for a, f in facts.items()]
        try:
            async with self._sessions() as session, session.begin():
                inserted = await events_db.insert_events_returning_ids(
                    session, list(unique.values()), now
                )
                await agents_db.record_checkins(session, updates)
        except Exception:  # any failure: nothing of this batch is stored; keep the writer alive
            self.failed_batches += 1
            self.rejected += len(batch)
            log.exception("ingest batch of %d check-ins failed; nothing stored", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(
                        Unavailable("could not store the check-in; retry later")
                    )
            return
        self.batches += 1
        self.checkins += len(batch)
        self.events_stored += len(inserted)
        self.duplicates += sum(len(item.events) for item in batch) - len(inserted)
        claimed: set[str] = set()
        for item in batch:
            new = {e.event_id for e in item.events} & inserted - claimed
            claimed |= new
            if not item.future.done():
                item.future.set_result(IngestResult(len(new), len(item.events) - len(new)))
