"""The History streams' shared reader: new rows read once per wake-up, rendered once, handed to
every open ``/history/stream``.

One :class:`HistoryFanout` per app. While at least one stream is subscribed, its reader task
sleeps on the event bus (a ``reader`` subscription: one per app, not one per stream), at most
one read per ``min_interval_seconds`` (busy ingest is coalesced into fewer, larger writes); each
wake-up reads the rows above its :attr:`HistoryFanout.position` (unfiltered, ascending, in
batches of ``batch_size``; through the web's pool, the connection released between batches),
asks once per batch which of their runs wait for input, and hands the batch to every
subscriber. A subscriber only filters (:func:`server.storage.history.event_matches`, the
Python twin of the SQL filter) and queues bytes: a matching row's frame is rendered (row JSON
and the page's Jinja macro) the first time any stream needs it and cached on the shared row.

A stream that starts behind the reader (its cursor below :attr:`HistoryFanout.position`)
catches up with its own bounded reads first (``server.web.history.stream``), then
:meth:`HistoryFanout.join` s at its cursor; the join is synchronous, so no batch can slip
between the last catch-up read and the first delivery. When the last stream leaves, the reader
stops and nothing of any stream is left here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server import app_keys
from server.domain import EventFilter, StoredEvent
from server.errors import Overloaded, Unavailable
from server.services import history as history_service
from server.services import inputs as inputs_service
from server.storage.history import event_matches
from server.web.api.shapes import event_json
from server.web.history.views import EventRow, event_row
from server.web.sessions import web_sessions
from server.web.sse import Outbox, cursor_frame, frame

log = logging.getLogger(__name__)

EVERYTHING = EventFilter()  # the reader's filter: every row
DELIVERY_CHUNK = 10  # streams served between two turns of the event loop
# The shortest pause between chunks: the loop idles a moment, so the ingest writer's thread gets
# the GIL (with 0 it waits for the interpreter's switch interval at every handover).
DELIVERY_PAUSE_SECONDS = 0.002
# A delivery that leaves nothing more to read is spread over this share of the read interval:
# each chunk of streams (their writes included) is then a short stretch of the loop's time, so
# a check-in never waits behind the whole fan-out (measured: tests/bench/streams.py).
DELIVERY_SPREAD = 0.8
RowRenderer = Callable[[EventRow], Any]  # the Jinja macro: returns Markup


def event_frame(event: StoredEvent, html: str) -> str:
    """A matching row's frame: the row as /api/v1/events shows it, and its HTML."""
    return frame("event", {"event": event_json(event), "html": html}, event.id)


@dataclass(slots=True)
class SharedRow:
    """One row of a batch, shared by every stream; its frame is rendered at most once."""

    event: StoredEvent
    now: datetime
    run_states: Mapping[str, str]
    _frame: bytes | None = None

    def frame(self, render: RowRenderer) -> bytes:
        if self._frame is None:
            html = str(render(event_row(self.event, self.now, run_states=self.run_states)))
            self._frame = event_frame(self.event, html).encode()
        return self._frame


@dataclass(eq=False, slots=True)
class HistorySubscriber:
    """One open stream as the reader sees it: its filters, how far it has been given rows,
    its bounded outbox, and whether it was ended (by overflow, an outage, shutdown)."""

    filter: EventFilter
    cursor: int  # rows up to here were handed to the outbox
    wake: Callable[[], None]  # wakes the stream's handler
    outbox: Outbox = field(init=False)  # set by the handler
    written: int = 0  # rows up to here were written to the response
    ended: bool = False
    reason: str = ""

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended, self.reason = True, reason
            self.wake()


@dataclass
class HistoryFanout:
    """The shared reader of one app (see the module docstring)."""

    app: web.Application
    batch_size: int
    ascii_case: bool  # the database folds case as SQLite does
    render: RowRenderer
    min_interval_seconds: float  # at most one read (and one write per stream) per interval
    subscribers: set[HistorySubscriber] = field(default_factory=set)
    position: int | None = None  # rows up to here were handed out (None: no subscriber)
    batches_read: int = 0  # shared reads (for tests and the benchmark)
    _task: asyncio.Task[None] | None = None
    _epoch: int = 0  # bumped whenever the position is reset: a read in flight is discarded

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The reader task (None before the first stream)."""
        return self._task

    def behind(self, cursor: int) -> bool:
        """A stream at ``cursor`` must catch up by itself before it :meth:`join` s."""
        return self.position is not None and cursor < self.position

    def join(self, sub: HistorySubscriber) -> None:
        """Start handing rows above ``sub.cursor`` to ``sub`` (synchronous: call it right after
        the last catch-up read, with no ``await`` between)."""
        assert not self.behind(sub.cursor), "catch up before joining"
        if self.position is None:
            self.position = sub.cursor
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="history-fanout")

    def leave(self, sub: HistorySubscriber) -> None:
        """Forget ``sub`` (idempotent); the last one out stops the reader."""
        self.subscribers.discard(sub)
        if not self.subscribers and self.position is not None:
            self.position = None
            self._epoch += 1

    async def _run(self) -> None:
        bus = self.app[app_keys.BUS]
        wake = bus.subscribe(reader=True)
        try:
            loop = asyncio.get_running_loop()
            next_read = 0.0
            must_read = True  # a first read: rows may have landed before anyone subscribed
            while self.subscribers and not wake.closed:
                now = loop.time()
                if must_read and now < next_read:  # the rate cap: coalesce commits
                    await asyncio.sleep(next_read - now)
                if must_read:
                    started = loop.time()
                    if not await self._read_all():
                        continue
                    next_read = started + self.min_interval_seconds
                await wake.wait(1.0)
                if wake.closed:
                    break
                position = self.position if self.position is not None else 0
                must_read = wake.take(position)
        except Exception:
            log.exception("history fan-out: the reader failed; ending its streams")
            self._end_all("reader failed")
        finally:
            wake.close()

    async def _read_all(self) -> bool:
        """Read and hand out every row above the position; False when it must be retried."""
        sessions = web_sessions(self.app)
        while self.subscribers and self.position is not None:
            epoch = self._epoch
            try:
                batch = await history_service.read_new_events(
                    sessions, EVERYTHING, self.position, self.batch_size
                )
                run_ids = sorted({e.run_id for e in batch.events if e.run_id})
                states = await inputs_service.run_states_among(sessions, run_ids)
            except Overloaded as exc:  # the web pool is exhausted: keep the streams, retry
                log.info("history fan-out: %s; retrying", exc.message)
                await asyncio.sleep(exc.retry_after_ms / 1000)
                return False
            except Unavailable:
                log.warning("history stream: database unavailable; ending the streams")
                self._end_all("database unavailable")
                return False
            self.batches_read += 1
            if epoch != self._epoch:  # every stream left during the read: start again
                continue
            await self._deliver(batch, states, spread=not batch.more)
            if self.position is None:  # the last stream left or was dropped
                return True
            if not batch.more:
                return True
        return True

    async def _deliver(
        self, batch: history_service.StreamBatch, states: Mapping[str, str], *, spread: bool
    ) -> None:
        """Hand ``batch`` to every subscriber: streams with the same filters at the same cursor
        (most of them, usually) share one matching pass and one bytes object. The position
        moves first, so a stream joining meanwhile catches up by itself; every
        ``DELIVERY_CHUNK`` streams the loop gets a turn (check-ins never wait behind a whole
        delivery). With ``spread`` (nothing more to read) the chunks are spaced over
        ``DELIVERY_SPREAD`` of the read interval; a backlog is delivered without the spacing."""
        now = datetime.now(UTC)
        rows = [SharedRow(e, now, states) for e in batch.events]
        targets = list(self.subscribers)
        if self.position is not None:
            self.position = max(self.position, batch.cursor)
        pause = DELIVERY_PAUSE_SECONDS
        chunks = -(-len(targets) // DELIVERY_CHUNK)
        if spread and chunks > 1:
            pause = max(pause, DELIVERY_SPREAD * self.min_interval_seconds / chunks)
        shared: dict[tuple[EventFilter, int], bytes] = {}
        for index, sub in enumerate(targets):
            if index and index % DELIVERY_CHUNK == 0:
                await asyncio.sleep(pause)
            if sub not in self.subscribers:
                continue
            key = (sub.filter, sub.cursor)
            data = shared.get(key)
            if data is None:
                data = shared[key] = self._frames(sub.filter, sub.cursor, rows, batch.cursor)
            sub.cursor = max(sub.cursor, batch.cursor)
            if data and not sub.outbox.put(data):
                self.leave(sub)

    def _frames(self, f: EventFilter, cursor: int, rows: list[SharedRow], examined: int) -> bytes:
        """What a stream with filters ``f`` at ``cursor`` gets of ``rows``."""
        parts: list[bytes] = []
        last = cursor
        for row in rows:
            if row.event.id > cursor and event_matches(f, row.event, ascii_case=self.ascii_case):
                parts.append(row.frame(self.render))
                last = row.event.id
        if examined > last and examined > cursor:
            parts.append(cursor_frame(examined).encode())
        return b"".join(parts)

    def _end_all(self, reason: str) -> None:
        for sub in list(self.subscribers):
            sub.end(reason)
            self.leave(sub)


HISTORY_FANOUT = web.AppKey("history_fanout", HistoryFanout)
