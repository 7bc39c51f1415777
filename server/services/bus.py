"""The event bus: wake-ups for live History and run streams, within one process and across
replicas.

The bus never carries events, only "History rows up to id N have been committed" wake-ups (and,
on the run topic, "run R changed or has new log lines"); every stream then reads the rows
themselves from the database (``id > its cursor``, ``seq > its cursor``), so a stream shows only
what is saved and a wake-up that is lost or repeated costs nothing but a query.

- :class:`EventBus` fans wake-ups out in-process to :class:`Subscription` s, coalescing flags
  (a slow subscriber never queues anything up). The web's shared readers
  (``server.web.history.fanout``, ``server.web.runs.fanout``) subscribe with ``reader=True``:
  woken, but not counted as streams; each open stream holds a passive subscription
  (:meth:`EventBus.register_stream`), counted in :attr:`EventBus.subscribers` and ended on
  shutdown, but never woken by commits (its reader wakes it).
- Run streams subscribe to one run (:meth:`EventBus.subscribe_run`) and are woken by
  :meth:`EventBus.publish_runs`.
- :class:`PostgresEventBus` adds a ``LISTEN`` connection (:class:`server.storage.notify.
  HistoryListener`): writers on any replica ``pg_notify`` inside their transaction
  (:func:`server.storage.notify.announce_history_commit`; ``pg_notify('flagpost_runs', run_id)``
  for runs), every replica hears it and wakes its own streams.

The ingest writer calls :meth:`EventBus.publish_committed` after each commit that stored rows
(through :meth:`EventBus.on_ingest_commit`, registered with ``IngestWriter.add_commit_listener``):
the local fast path; on PostgreSQL the notification reaches the other replicas by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from types import TracebackType
from typing import TYPE_CHECKING

from server.config import ServerConfig
from server.storage.notify import HistoryListener

if TYPE_CHECKING:
    from server.services.ingest import CommittedBatch

log = logging.getLogger(__name__)


class Subscription:
    """One stream's wake-up flag. Create with :meth:`EventBus.subscribe`; use as a context
    manager (or call :meth:`close`) so the bus forgets it."""

    def __init__(self, bus: EventBus, run_id: str | None = None, *, counted: bool = True) -> None:
        self._bus = bus
        self.run_id = run_id  # None: the History topic
        self.counted = counted  # a stream (True) or a shared reader (False)
        self.passive = False  # see EventBus.register_stream
        self._flag = asyncio.Event()
        self._hint: int | None = None
        self._look = False  # a wake-up without an id: the stream must query
        self.closed = False

    def wake(self) -> None:
        """Wake the waiter without an id (a shared reader handing a stream its frames)."""
        self._wake(None)

    def _wake(self, max_id: int | None) -> None:
        if max_id is None:
            self._look = True
        elif self._hint is None or max_id > self._hint:
            self._hint = max_id
        self._flag.set()

    def _end(self) -> None:
        self.closed = True
        self._flag.set()

    async def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a wake-up; True if one came (or the bus is
        closing: check :attr:`closed`), False on timeout."""
        if self._flag.is_set():
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._flag.wait()
        except TimeoutError:
            return False
        return True

    def take(self, cursor: int) -> bool:
        """Consume pending wake-ups; True when a stream at ``cursor`` has something to read
        (an announced id above ``cursor``, or a wake-up that named no id)."""
        self._flag.clear()
        hint, look = self._hint, self._look
        self._hint, self._look = None, False
        return look or (hint is not None and hint > cursor)

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        self._bus._forget(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventBus:
    """In-process fan-out of commit wake-ups (the whole bus for SQLite: one server process)."""

    kind = "local"

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._run_subscribers: dict[str, set[Subscription]] = {}
        self._streams: set[Subscription] = set()  # passive: woken by their reader, not by us
        self._ending = False
        self.published = 0  # wake-ups received (local publishes plus notifications)
        self.run_wakeups = 0  # run-topic wake-ups received

    @property
    def subscribers(self) -> int:
        """Open subscriptions, History and run streams together."""
        woken = sum(s.counted for s in self._subscribers)
        woken += sum(s.counted for subs in self._run_subscribers.values() for s in subs)
        return len(self._streams) + woken

    def subscribe(self, *, reader: bool = False) -> Subscription:
        """A new History subscription; already ended when the bus is shutting down.
        ``reader``: a shared reader's, not counted in :attr:`subscribers`."""
        sub = Subscription(self, counted=not reader)
        if self._ending:
            sub._end()
        else:
            self._subscribers.add(sub)
        return sub

    def subscribe_run(self, run_id: str, *, reader: bool = False) -> Subscription:
        """A new subscription to one run's changes (state, steps, log lines)."""
        sub = Subscription(self, run_id, counted=not reader)
        if self._ending:
            sub._end()
        else:
            self._run_subscribers.setdefault(run_id, set()).add(sub)
        return sub

    def register_stream(self) -> Subscription:
        """A passive subscription for one open stream: counted, ended on shutdown, woken only
        through :meth:`Subscription.wake` (by the shared reader feeding it)."""
        sub = Subscription(self)
        sub.passive = True
        if self._ending:
            sub._end()
        else:
            self._streams.add(sub)
        return sub

    def _forget(self, sub: Subscription) -> None:
        if sub.passive:
            self._streams.discard(sub)
            return
        if sub.run_id is None:
            self._subscribers.discard(sub)
            return
        subs = self._run_subscribers.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._run_subscribers[sub.run_id]

    def publish_runs(self, run_ids: Collection[str] | None = None) -> None:
        """Wake the streams of ``run_ids`` (``None`` or empty: every run stream): those runs
        changed or got new log lines. Call it only AFTER the commit. Never blocks, never
        raises."""
        self.run_wakeups += 1
        if not run_ids:
            targets = [sub for subs in self._run_subscribers.values() for sub in subs]
        else:
            targets = [sub for run_id in run_ids for sub in self._run_subscribers.get(run_id, ())]
        for sub in targets:
            sub._wake(None)

    def publish_committed(self, max_id: int | None = None) -> None:
        """Wake every stream: History rows up to ``max_id`` are committed (``None``: something
        may be new). Call it only AFTER the commit. Never blocks, never raises."""
        self.published += 1
        for sub in self._subscribers:
            sub._wake(max_id)

    def on_ingest_commit(self, batch: CommittedBatch) -> None:
        """An ``IngestWriter`` commit listener: publish new History rows and changed runs."""
        if batch.max_id is not None:
            self.publish_committed(batch.max_id)
        if batch.run_ids:
            self.publish_runs(batch.run_ids)

    def end_streams(self) -> None:
        """End every subscription, now and later (server shutdown: streams finish their
        responses so the web server can stop without waiting for its shutdown timeout)."""
        self._ending = True
        for sub in list(self._subscribers):
            sub._end()
        for subs in list(self._run_subscribers.values()):
            for sub in list(subs):
                sub._end()
        for sub in list(self._streams):
            sub._end()
        self._streams.clear()
        self._subscribers.clear()
        self._run_subscribers.clear()

    async def start(self) -> None:
        """Start receiving wake-ups from other processes (nothing to do in-process)."""

    async def close(self) -> None:
        """Stop: end every stream and release connections (idempotent)."""
        self.end_streams()


class PostgresEventBus(EventBus):
    """:class:`EventBus` plus PostgreSQL ``LISTEN``: wake-ups from every replica."""

    kind = "postgresql"

    def __init__(self, database_url: str, *, ping_seconds: float = 30.0) -> None:
        super().__init__()
        self.listener = HistoryListener(
            database_url,
            self.publish_committed,
            on_runs=self._on_runs_notification,
            ping_seconds=ping_seconds,
        )

    def _on_runs_notification(self, run_id: str | None) -> None:
        self.publish_runs([run_id] if run_id else None)

    async def start(self) -> None:
        """Open the ``LISTEN`` connection (raises when PostgreSQL cannot be reached)."""
        await self.listener.start()

    async def close(self) -> None:
        """End every stream, then close the ``LISTEN`` connection (idempotent)."""
        self.end_streams()
        await self.listener.close()


def create_bus(config: ServerConfig) -> EventBus:
    """The bus for ``config``: in-process for SQLite, LISTEN/NOTIFY for PostgreSQL."""
    if config.is_sqlite:
        return EventBus()
    return PostgresEventBus(config.database_url)
