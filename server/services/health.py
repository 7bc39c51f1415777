"""Database health: one shared state, kept fresh by a background monitor.

``DatabaseHealth.available`` is what the server acts on: ingest fails check-ins fast with
UNAVAILABLE while it is False, the gRPC health service answers NOT_SERVING and ``/healthz``
answers 503 (listeners registered with ``add_listener``). It turns False on a failed probe or at
once when the ingest writer reports a connection-level failure, and True again on the first
successful probe: service resumes by itself, no restart.

``HealthMonitor`` probes the database every ``health_probe_interval_ms`` — but only when the
last proof of health is older than that: while ingest commits keep succeeding they are the
proof, and a busy SQLite writer is not made to wait for the probe's write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.config import ServerConfig
from server.errors import Unavailable
from server.storage.db import probe

log = logging.getLogger(__name__)

HealthListener = Callable[[bool], Awaitable[None]]

# Errors that mean "the database is unreachable or busy" rather than "this data is bad".
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    OSError,
    TimeoutError,
    ConnectionError,
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable (retry later), not bad data."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OUTAGE_ERRORS)


@contextlib.contextmanager
def unavailable_on_outage(what: str) -> Iterator[None]:
    """Turn a database outage inside the block into ``Unavailable`` (retryable, 503/UNAVAILABLE)
    with no driver details; other errors pass through."""
    try:
        yield
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("%s: database unavailable (%s)", what, type(exc).__name__)
        raise Unavailable("the database is unavailable; retry later") from exc


class DatabaseHealth:
    """Is the database reachable? Read ``available``; report with ``report_*``."""

    def __init__(self) -> None:
        self.available = True
        self.last_error: str | None = None  # exception type name only: never driver details
        self.last_ok = time.monotonic()
        self.failures = 0  # probes or commits that found the database unreachable
        self._published: bool | None = None
        self._listeners: list[HealthListener] = []
        self._changed = asyncio.Event()

    def add_listener(self, listener: HealthListener) -> None:
        """Await ``listener(available)`` on every change (and once with the current state)."""
        self._listeners.append(listener)
        self._published = None
        self._changed.set()

    def report_success(self) -> None:
        """The database just did real work (a commit, a probe)."""
        self.last_ok = time.monotonic()
        if not self.available:
            log.info("database reachable again: resuming service")
            self.available = True
            self.last_error = None
            self._changed.set()

    def report_failure(self, exc: BaseException) -> None:
        """The database could not be reached or locked (from a probe or a failed commit)."""
        self.failures += 1
        self.last_error = type(exc).__name__
        if self.available:
            log.warning(
                "database unavailable (%s): check-ins refused until it is back", type(exc).__name__
            )
            self.available = False
            self._changed.set()

    async def publish(self) -> None:
        """Tell the listeners about a change (the monitor calls this)."""
        self._changed.clear()
        state = self.available
        if state == self._published:
            return
        self._published = state
        for listener in list(self._listeners):
            try:
                await listener(state)
            except Exception:
                log.exception("health listener failed")

    async def wait_changed(self, seconds: float) -> None:
        """Return after ``seconds`` or as soon as the state changes."""
        try:
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        except TimeoutError:
            pass


class HealthMonitor:
    """The background probe loop (``start`` / ``await stop()``)."""

    def __init__(self, config: ServerConfig, engine: AsyncEngine, health: DatabaseHealth) -> None:
        self._interval = config.health_probe_interval_ms / 1000
        self._timeout = config.health_probe_timeout_ms / 1000
        self._engine = engine
        self.health = health
        self.probes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flagpost-health-monitor"
            )

    async def stop(self) -> None:
        """Stop probing (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def probe_once(self) -> bool:
        """Probe now, record the outcome, return whether the database is available."""
        self.probes += 1
        try:
            await probe(self._engine, self._timeout)
        except Exception as exc:  # any failure to reach or lock the database
            self.health.report_failure(exc)
        else:
            self.health.report_success()
        return self.health.available

    async def _run(self) -> None:
        health = self.health
        while True:
            if not health.available or time.monotonic() - health.last_ok >= self._interval:
                await self.probe_once()
            await health.publish()
            await health.wait_changed(self._interval)
