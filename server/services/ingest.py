"""Group-commit ingest: many check-ins, one transaction.

Transports call ``IngestWriter.submit``; it encodes the check-in's events into driver-ready rows
(on the caller's task, so this overlaps the commit in progress), queues the check-in (the bound
counts events, ``ingest_queue_max_events``) and waits. One writer task takes everything queued,
up to ``ingest_batch_max_events``, inserts the events (duplicates by ``(agent_id, event_id)``
ignored) and updates the agents' ``last_checkin_at`` and facts in ONE transaction, commits, and
only then resolves each check-in's future: an acknowledgement always means "durably stored".

Batching: a busy server needs no timer, the check-ins that arrive while one batch commits form
the next. Only when the writer wakes from idle does it wait ``ingest_batch_max_wait_ms`` for
company. On PostgreSQL up to ``ingest_writers`` batches commit at once, each in its own
transaction on its own connection (the database does the work; this process mostly waits):
batches in flight never share an agent (a check-in whose agent is in one waits for it, and so
does everything queued behind it), so they touch disjoint agent, run and action rows; and at
most one of them holds events, since those would only queue on the History lock
(``server.storage.notify.lock_history_writes``, which keeps History ids visible in order) in
smaller transactions. What runs beside a batch of events is log lines and run updates. SQLite
has one writer connection: one batch at a time.

Agent updates are coalesced: one UPDATE per agent per batch, and none at all when this process
wrote the same facts for that agent less than ``LAST_SEEN_RESOLUTION`` ago (so
``last_checkin_at`` is exact to within that resolution; health is derived in whole intervals).

Failure handling: a full queue raises ResourceExhausted at once (clients retry after
``retry_after_ms``); while the database is known to be unreachable (``DatabaseHealth``)
check-ins fail fast with Unavailable; a database error fails that batch's check-ins with
Unavailable (retryable, nothing stored, nothing acknowledged) and the writer carries on. A batch
that fails for a data reason (a constraint) is retried one check-in at a time, so one poisoned
check-in cannot keep failing everyone else's. ``stop()`` refuses new check-ins, drains and
commits everything already queued, then ends the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import (
    HostFacts,
    NewEvent,
    NewLogLine,
    NewRunUpdate,
    PendingAction,
    SpecVersionReport,
)
from server.errors import FlagpostError, ResourceExhausted, Unavailable
from server.services.health import DatabaseHealth, describe, is_outage
from server.storage import agents as agents_db
from server.storage import events as events_db
from server.storage import run_ingest
from server.storage.batches import BatchStore, SessionStore, StoreResult

log = logging.getLogger(__name__)

LAST_SEEN_RESOLUTION = 1.0  # seconds
# A log line row (7 columns, 3 indexes) costs the database about a quarter of an event row
# (15 columns, 7 indexes): measured, 1,000-line check-ins batched by the event limit made
# transactions too small (~2 check-ins each) to reach 50,000 lines/s on SQLite.
LOG_LINES_PER_COST_UNIT = 4


def checkin_cost(events: int, run_updates: int, log_lines: int) -> int:
    """A check-in's weight in the queue bound and batch size (``ingest_*_max_events``), in
    events: events and run updates count one each, log lines a quarter; at least one."""
    return max(1, events + run_updates + -(-log_lines // LOG_LINES_PER_COST_UNIT))


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one check-in's commit did."""

    stored: int  # events newly inserted
    duplicates: int  # events already stored (or repeated within the batch)
    actions: tuple[PendingAction, ...] = ()  # to deliver in the check-in's response


@dataclass(frozen=True, slots=True)
class RunInput:
    """The runs part of a validated check-in (``server.storage.run_ingest`` applies it)."""

    updates: Sequence[NewRunUpdate] = ()
    log_lines: Sequence[NewLogLine] = ()  # unique by (run_id, seq)
    acked_action_ids: Sequence[str] = ()
    # facts.specs of a check-in with facts (None: keep what is stored)
    spec_versions: Sequence[SpecVersionReport] | None = None


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """What one committed transaction stored (handed to commit listeners, e.g. the live bus)."""

    max_id: int | None  # highest update_events.id inserted, None when nothing new
    stored: int
    agent_ids: frozenset[str]
    run_ids: frozenset[str] = frozenset()  # runs changed or with new log lines


CommitListener = Callable[[CommittedBatch], None]


@dataclass(slots=True)
class _Checkin:
    agent_id: str
    facts: HostFacts | None
    event_ids: list[str]
    rows: list[events_db.Row]
    sent: int  # events in the request (before de-duplication)
    future: asyncio.Future[IngestResult]
    submitted: float
    work: run_ingest.RunWork
    cost: int = field(init=False)

    def __post_init__(self) -> None:
        self.cost = checkin_cost(len(self.rows), len(self.work.updates), len(self.work.log_rows))


class IngestWriter:
    """The group-commit writer. Counters are plain attributes (``server.metrics`` reads them)."""

    def __init__(
        self,
        config: ServerConfig,
        sessions: async_sessionmaker[AsyncSession],
        *,
        health: DatabaseHealth | None = None,
        observe_latency: Callable[[float], None] | None = None,
        store: BatchStore | None = None,
    ) -> None:
        self._config = config
        self._store: BatchStore = store if store is not None else SessionStore(sessions)
        self._dialect = "sqlite" if config.is_sqlite else "postgresql"
        self._health = health
        self._observe_latency = observe_latency
        self._pending: deque[_Checkin] = deque()
        self._wakeup = asyncio.Event()
        self._queued_cost = 0
        self._task: asyncio.Task[None] | None = None
        self._writers = 1 if self._dialect == "sqlite" else config.ingest_writers
        self._in_flight: set[asyncio.Task[None]] = set()  # batches being committed
        self._busy_agents: Counter[str] = Counter()  # check-ins per agent in those batches
        self._slot_freed = asyncio.Event()
        self._event_batches = 0  # of those, batches with events: at most one at a time
        self._closing = False
        self._store_closed = False
        self._written: dict[str, tuple[HostFacts | None, float]] = {}
        self._listeners: list[CommitListener] = []
        # Counters
        self.checkins = 0  # check-ins committed and acknowledged
        self.events_stored = 0  # rows inserted
        self.duplicates = 0  # events ignored as already stored (or repeated in a request)
        self.rejected = 0  # check-ins refused (queue full, stopping, db down) or failed
        self.batches = 0  # transactions committed
        self.failed_batches = 0
        self.run_updates_applied = 0
        self.run_updates_ignored = 0  # duplicates, older snapshots, refused transitions
        self.log_lines_stored = 0
        self.log_lines_dropped = 0  # another agent's run, or a row that failed alone
        self.actions_delivered = 0

    @property
    def queued_events(self) -> int:
        """Events (at least one per check-in) waiting for the writer or being committed."""
        return self._queued_cost

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener`` (synchronously, on the loop) after every committed batch."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Start the writer task on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flagpost-ingest-writer"
            )

    async def stop(self) -> None:
        """Refuse new check-ins, commit everything queued, then end the writer and close its
        store (idempotent)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        if not self._store_closed:
            self._store_closed = True
            await self._store.close()

    async def submit(
        self,
        agent_id: str,
        facts: HostFacts | None,
        events: Sequence[NewEvent],
        sent: int = -1,
        *,
        runs: RunInput | None = None,
    ) -> IngestResult:
        """Queue one validated check-in and wait until it is committed.

        ``events`` are unique by event_id; ``sent`` is how many the request carried (default
        ``len(events)``; the difference counts as duplicates). ``runs``: its run updates, log
        lines and acknowledged actions, applied in the same transaction. The result carries the
        actions to deliver to the agent. Raises ResourceExhausted when the queue is full,
        Unavailable when the server is stopping, the database is known to be down or the commit
        failed (in every case nothing of this check-in was stored)."""
        if self._closing or not self.running:
            self.rejected += 1
            raise Unavailable("the server is shutting down; retry shortly")
        if self._health is not None and not self._health.available:
            self.rejected += 1
            raise Unavailable(self._health.message)
        work = run_ingest.RunWork(agent_id)
        if runs is not None:
            work.updates = runs.updates
            work.acked_action_ids = runs.acked_action_ids
            work.spec_versions = runs.spec_versions
            if runs.log_lines:
                work.log_rows = run_ingest.encode_log_lines(runs.log_lines, self._dialect)
                work.log_run_ids = frozenset(line.run_id for line in runs.log_lines)
        cost = checkin_cost(len(events), len(work.updates), len(work.log_rows))
        if self._queued_cost + cost > self._config.ingest_queue_max_events:
            self.rejected += 1
            raise ResourceExhausted(
                "the server is busy; retry later", retry_after_ms=self._config.retry_after_ms
            )
        now = datetime.now(UTC)
        item = _Checkin(
            agent_id=agent_id,
            facts=facts,
            event_ids=[e.event_id for e in events],
            rows=events_db.encode_events(events, now, self._dialect),
            sent=len(events) if sent < 0 else sent,
            future=asyncio.get_running_loop().create_future(),
            submitted=time.perf_counter(),
            work=work,
        )
        self._queued_cost += item.cost
        self._pending.append(item)
        self._wakeup.set()
        # If the caller goes away its future is cancelled, but the check-in still commits.
        return await item.future

    async def _run(self) -> None:
        wait = self._config.ingest_batch_max_wait_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                if wait > 0 and not self._closing and not self._in_flight:
                    await asyncio.sleep(wait)  # woken from idle: let a few more arrive
                continue
            head = self._pending[0]
            if (
                len(self._in_flight) >= self._writers
                or head.agent_id in self._busy_agents
                or (head.rows and self._event_batches)
            ):
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            batch = self._take(events=not self._event_batches)
            # Counted now, not when the task starts: the next turn of this loop comes first.
            for item in batch:
                self._busy_agents[item.agent_id] += 1
            with_events = any(item.rows for item in batch)
            self._event_batches += with_events
            task = loop.create_task(self._commit_in_flight(batch, with_events))
            self._in_flight.add(task)
        if self._in_flight:
            await asyncio.gather(*self._in_flight)

    async def _commit_in_flight(self, batch: list[_Checkin], with_events: bool) -> None:
        try:
            await self._commit(batch)
        except Exception:  # never let the writer die; _commit already failed the futures
            log.exception("ingest writer error")
        finally:
            self._event_batches -= with_events
            self._queued_cost -= sum(item.cost for item in batch)
            self._busy_agents.subtract(item.agent_id for item in batch)
            for agent_id in {item.agent_id for item in batch}:
                if self._busy_agents[agent_id] <= 0:
                    del self._busy_agents[agent_id]
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)  # before the wake-up: _run counts the slots
            self._slot_freed.set()

    def _take(self, *, events: bool = True) -> list[_Checkin]:
        """The next batch: queued check-ins in order, up to the size limit, stopping at one
        whose agent has a check-in in a batch still being committed, or (``events`` false: a
        batch with events is being committed) at one with events."""
        limit = self._config.ingest_batch_max_events
        busy = self._busy_agents
        batch = [self._pending.popleft()]
        size = batch[0].cost
        while (
            self._pending
            and size + self._pending[0].cost <= limit
            and self._pending[0].agent_id not in busy
            and (events or not self._pending[0].rows)
        ):
            item = self._pending.popleft()
            batch.append(item)
            size += item.cost
        return batch

    def _agent_updates(
        self, batch: list[_Checkin], now: datetime, mono: float
    ) -> list[agents_db.CheckinUpdate]:
        facts: dict[str, HostFacts | None] = {}
        for item in batch:  # the newest facts of each agent win; a check-in without keeps them
            if item.facts is not None or item.agent_id not in facts:
                facts[item.agent_id] = item.facts
        updates = []
        for agent_id, agent_facts in facts.items():
            written = self._written.get(agent_id)
            if (
                written is not None
                and mono - written[1] < LAST_SEEN_RESOLUTION
                and (agent_facts is None or agent_facts == written[0])
            ):
                continue  # this process wrote the same facts for it a moment ago
            updates.append(agents_db.CheckinUpdate(agent_id, now, agent_facts))
        return updates

    async def _commit(self, batch: list[_Checkin]) -> None:
        seen: set[tuple[str, str]] = set()  # (agent_id, event_id): an id is unique per agent
        rows: list[events_db.Row] = []
        for item in batch:
            for event_id, row in zip(item.event_ids, item.rows, strict=True):
                key = (item.agent_id, event_id)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        now = datetime.now(UTC)
        mono = time.monotonic()
        updates = self._agent_updates(batch, now, mono)
        try:
            result = await self._store.store(rows, updates, [item.work for item in batch])
        except ResourceExhausted as exc:  # no connection free (Overloaded): shed, no retry
            self.failed_batches += 1
            log.warning("ingest batch of %d check-ins shed: %s", len(batch), exc.message)
            self._fail(batch, exc)
            return
        except Exception as exc:  # nothing of this batch is stored; keep the writer alive
            self._batch_failed(batch, exc)
            if not is_outage(exc) and len(batch) > 1:
                log.warning("retrying a failed batch of %d check-ins one by one", len(batch))
                for item in batch:
                    await self._commit([item])
            elif self._health is not None and not self._health.available:
                self._fail(batch, Unavailable(self._health.message))
            else:
                self._fail(batch)
            return
        if self._health is not None:
            self._health.report_success(wrote=True)
        for update in updates:
            self._written[update.agent_id] = (
                update.facts if update.facts is not None else self._known_facts(update.agent_id),
                mono,
            )
        self._resolve(batch, result)

    def _known_facts(self, agent_id: str) -> HostFacts | None:
        written = self._written.get(agent_id)
        return written[0] if written is not None else None

    def _batch_failed(self, batch: list[_Checkin], exc: Exception) -> None:
        self.failed_batches += 1
        if is_outage(exc):
            known = self._health is not None and not self._health.available
            fault = self._health.report_failure(exc) if self._health is not None else None
            # The health state logs the cause once per change; each batch only at DEBUG after.
            log.log(
                logging.DEBUG if known else logging.WARNING,
                "ingest batch of %d check-ins failed (%s); nothing stored",
                len(batch),
                describe(fault) if fault is not None else type(exc).__name__,
            )
        else:
            log.error(
                "ingest batch of %d check-ins failed; nothing stored", len(batch), exc_info=exc
            )

    def _fail(self, batch: list[_Checkin], error: FlagpostError | None = None) -> None:
        self.rejected += len(batch)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(
                    error or Unavailable("could not store the check-in; retry later")
                )

    def _resolve(self, batch: list[_Checkin], result: StoreResult) -> None:
        inserted = result.inserted
        runs = result.runs
        self.run_updates_applied += runs.updates_applied
        self.run_updates_ignored += runs.updates_ignored
        self.log_lines_stored += runs.log_lines_stored
        self.log_lines_dropped += runs.log_lines_dropped
        new_keys = {(agent_id, event_id) for _, agent_id, event_id in inserted}
        self.batches += 1
        self.checkins += len(batch)
        self.events_stored += len(inserted)
        done = time.perf_counter()
        observe = self._observe_latency
        for item in batch:
            new = 0
            for event_id in item.event_ids:
                key = (item.agent_id, event_id)
                if key in new_keys:
                    new_keys.discard(key)  # a repeat in a later check-in is a duplicate
                    new += 1
            # Per check-in, never negative: the counter only grows (``inserted`` also holds
            # run-update notices, which no check-in sent).
            self.duplicates += item.sent - new
            if observe is not None:
                observe(done - item.submitted)
            actions = tuple(runs.actions.get(item.agent_id, ()))
            self.actions_delivered += len(actions)
            if not item.future.done():
                item.future.set_result(IngestResult(new, item.sent - new, actions))
        if self._listeners:
            committed = CommittedBatch(
                max_id=max((row[0] for row in inserted), default=None),
                stored=len(inserted),
                agent_ids=frozenset(item.agent_id for item in batch),
                run_ids=frozenset(runs.changed_run_ids),
            )
            for listener in self._listeners:
                try:
                    listener(committed)
                except Exception:
                    log.exception("commit listener failed")
