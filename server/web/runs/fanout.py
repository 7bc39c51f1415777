"""The run streams' shared readers: one per run with open streams, reading the run's status and
new log lines once per wake-up, rendering each once, for every ``/runs/{run_id}/stream``.

A :class:`RunReader` lives while its run has streams: it sleeps on the run's bus topic (one
``reader`` subscription per run), reads at most once per ``min_interval_seconds`` (a busy run's
lines are coalesced), polls slowly as a safety net while the run is active, and holds its
position at a gap in the seqs for up to ``gap_grace_seconds`` (as the stream did on its own).
Each subscriber only filters the lines by its log filter and queues the cached frames; the run
frame goes to a subscriber only when it differs from the last one it got. A stream that starts
behind the reader catches up with its own reads (``server.web.runs.stream``), then joins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from server import app_keys
from server.errors import FlagpostError, Overloaded
from server.services import logs as logs_service
from server.web.request import LogFilter
from server.web.runs.pages import run_status
from server.web.runs.views import (
    RUNS_TEMPLATE,
    LogLineRow,
    RunDetailView,
    log_line_json,
    log_line_row,
    run_json,
)
from server.web.sessions import web_sessions
from server.web.sse import Outbox, cursor_frame, frame
from server.web.templates import template_macro

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunStreamSettings:
    """Tunables of the run stream (an app may override them with ``RUN_STREAM_SETTINGS``)."""

    heartbeat_seconds: float = 15.0
    batch_size: int = 500  # lines per database read
    retry_ms: int = 2_000  # the reconnect delay suggested to EventSource
    disconnect_check_seconds: float = 1.0
    min_interval_seconds: float = 0.1  # live rate cap: at most one read (and write) per interval
    poll_seconds: float = 5.0  # safety net: re-read an active run even without a wake-up
    gap_grace_seconds: float = 2.0  # how long a missing seq holds the cursor back
    outbox_bytes: int = 1 << 20  # frames waiting for a client that does not read: then it ends


class RunRenderer:
    """The page's own Jinja macros, so streamed HTML is escaped exactly like the page."""

    def __init__(self, app: web.Application) -> None:
        self._log_line = template_macro(app, "log_line", RUNS_TEMPLATE)
        self._status = template_macro(app, "run_status", RUNS_TEMPLATE)
        self._counts = template_macro(app, "log_counts", RUNS_TEMPLATE)

    def log_frame(self, line: LogLineRow) -> str:
        data = {"line": log_line_json(line), "html": str(self._log_line(line))}
        return frame("log", data, line.seq)

    def run_frame(self, run: RunDetailView) -> str:
        data = {
            "run": run_json(run),
            "status_html": str(self._status(run)),
            "counts_html": str(self._counts(run.stats)),
        }
        return frame("run", data)


async def lines_after(
    app: web.Application, run_id: str, after_seq: int, limit: int
) -> list[LogLineRow]:
    """Every stored line of the run with ``seq > after_seq``, ascending, at most ``limit``."""
    records = await logs_service.lines_after(web_sessions(app), run_id, after_seq, limit)
    return [log_line_row(r) for r in records]


@dataclass(eq=False, slots=True)
class RunSubscriber:
    """One open run stream as its reader sees it."""

    log_filter: LogFilter
    cursor: int  # lines up to here were handed to the outbox
    last_status: str  # the last run frame it got
    wake: Callable[[], None]
    outbox: Outbox = field(init=False)  # set by the handler
    written: int = 0  # lines up to here were written to the response
    ended: bool = False
    reason: str = ""

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended, self.reason = True, reason
            self.wake()


@dataclass(slots=True)
class _SharedLine:
    line: LogLineRow
    _frame: bytes | None = None

    def frame(self, renderer: RunRenderer) -> bytes:
        if self._frame is None:
            self._frame = renderer.log_frame(self.line).encode()
        return self._frame


@dataclass
class RunReader:
    """The shared reader of one run (see the module docstring)."""

    app: web.Application
    run_id: str
    settings: RunStreamSettings
    renderer: RunRenderer
    position: int
    on_idle: Callable[[RunReader], None]
    subscribers: set[RunSubscriber] = field(default_factory=set)
    status_frame: str = ""
    terminal: bool = False
    gap_since: float | None = None
    reads: int = 0
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="run-fanout")

    def leave(self, sub: RunSubscriber) -> None:
        self.subscribers.discard(sub)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self.app[app_keys.BUS].subscribe_run(self.run_id, reader=True)
        try:
            next_read = 0.0
            must_read = True
            while self.subscribers and not wake.closed:
                now = loop.time()
                if must_read and now < next_read:  # the rate cap: coalesce wake-ups
                    await asyncio.sleep(next_read - now)
                if must_read:
                    if not await self._read():
                        continue
                    next_read = loop.time() + self.settings.min_interval_seconds
                woke = await wake.wait(max(min(self._poll_wait(), 1.0), 0.0))
                if wake.closed:
                    break
                if woke:
                    wake.take(-1)  # run wake-ups carry no cursor: always read
                must_read = woke or self._poll_due(loop.time(), next_read)
        except Exception:
            log.exception("run %s fan-out: the reader failed; ending its streams", self.run_id)
            self._end_all("reader failed")
        finally:
            wake.close()
            self._end_all("reader stopped")
            self.on_idle(self)

    def _poll_wait(self) -> float:
        if self.gap_since is not None:
            return max(0.05, self.settings.gap_grace_seconds / 4)
        return self.settings.poll_seconds if not self.terminal else self.settings.heartbeat_seconds

    def _poll_due(self, now: float, last_read: float) -> bool:
        if self.gap_since is not None:
            return True
        return not self.terminal and now - last_read >= self.settings.poll_seconds

    async def _read(self) -> bool:
        """Read the status and every new line, hand them out; False when it must be retried."""
        loop = asyncio.get_running_loop()
        try:
            status = await run_status(self.app, self.run_id)
            self.status_frame = self.renderer.run_frame(status)
            self.terminal = status.terminal
            self.reads += 1
            status_sent = False
            while self.subscribers:
                lines = await lines_after(
                    self.app, self.run_id, self.position, self.settings.batch_size
                )
                examined = self.position
                held = False
                shared: list[_SharedLine] = []
                for line in lines:
                    if line.seq != examined + 1:
                        now = loop.time()
                        if self.gap_since is None:
                            self.gap_since = now
                        if now - self.gap_since < self.settings.gap_grace_seconds:
                            held = True
                            break
                        log.info(
                            "run %s: log seq %d never arrived; moving on", self.run_id, examined + 1
                        )
                    self.gap_since = None
                    examined = line.seq
                    shared.append(_SharedLine(line))
                if shared or not status_sent:
                    self._deliver(shared, examined)
                    status_sent = True
                self.position = examined
                if held or len(lines) < self.settings.batch_size:
                    break
        except Overloaded as exc:
            log.info("run %s fan-out: %s; retrying", self.run_id, exc.message)
            await asyncio.sleep(exc.retry_after_ms / 1000)
            return False
        except FlagpostError as exc:  # Unavailable, NotFound (the run was pruned)
            log.warning("run stream: %s; ending the streams of run %s", exc.message, self.run_id)
            self._end_all("database unavailable")
            return True
        return True

    def _deliver(self, shared: list[_SharedLine], examined: int) -> None:
        """Hand the status and ``shared`` to every subscriber; streams with the same filter,
        cursor and last status share one bytes object."""
        done: dict[tuple[LogFilter, int, bool], bytes] = {}
        for sub in list(self.subscribers):
            key = (sub.log_filter, sub.cursor, sub.last_status == self.status_frame)
            data = done.get(key)
            if data is None:
                data = done[key] = self._frames(sub, shared, examined)
            sub.last_status = self.status_frame
            sub.cursor = max(sub.cursor, examined)
            if data and not sub.outbox.put(data):
                self.leave(sub)

    def _frames(self, sub: RunSubscriber, shared: list[_SharedLine], examined: int) -> bytes:
        parts: list[bytes] = []
        if self.status_frame != sub.last_status:
            parts.append(self.status_frame.encode())
        last = sub.cursor
        for item in shared:
            if item.line.seq > sub.cursor and sub.log_filter.matches(item.line):
                parts.append(item.frame(self.renderer))
                last = item.line.seq
        if examined > last and examined > sub.cursor:
            parts.append(cursor_frame(examined).encode())  # read past non-matching lines
        return b"".join(parts)

    def _end_all(self, reason: str) -> None:
        for sub in list(self.subscribers):
            sub.end(reason)
        self.subscribers.clear()


@dataclass
class RunFanouts:
    """Every run's shared reader of one app, created with its first stream, removed with its
    last."""

    app: web.Application
    settings: RunStreamSettings
    renderer: RunRenderer
    readers: dict[str, RunReader] = field(default_factory=dict)

    def get(self, run_id: str) -> RunReader | None:
        return self.readers.get(run_id)

    def join(self, run_id: str, sub: RunSubscriber) -> None:
        """Hand ``sub`` its run's new lines from now on (synchronous: right after the last
        catch-up read)."""
        reader = self.readers.get(run_id)
        if reader is None or reader.task is None or reader.task.done():
            reader = RunReader(
                self.app, run_id, self.settings, self.renderer, sub.cursor, self._idle
            )
            self.readers[run_id] = reader
            reader.subscribers.add(sub)
            reader.start()
            return
        reader.subscribers.add(sub)

    def leave(self, run_id: str, sub: RunSubscriber) -> None:
        reader = self.readers.get(run_id)
        if reader is not None:
            reader.leave(sub)

    def _idle(self, reader: RunReader) -> None:
        if self.readers.get(reader.run_id) is reader:
            del self.readers[reader.run_id]

    def subscribers(self) -> int:
        return sum(len(r.subscribers) for r in self.readers.values())

    def tasks(self) -> list[asyncio.Task[None]]:
        return [r.task for r in self.readers.values() if r.task is not None]
