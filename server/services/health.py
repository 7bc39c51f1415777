"""Database health: one shared state, kept fresh by a background monitor.

``DatabaseHealth.available`` is what the server acts on: ingest fails check-ins fast with
UNAVAILABLE while it is False, the gRPC health service answers NOT_SERVING and ``/healthz``
answers 503 (listeners registered with ``add_listener``). It turns False on a failed probe or at
once when the ingest writer reports a database failure, and True again on the next successful
write (a probe's, a committed batch's): service resumes by itself, no restart.
``DatabaseHealth.fault`` names the cause (``server.storage.faults.DbFault``: disk full,
read-only, locked, unreachable, timeout, other); one line is logged per change of state or
cause, never a driver message.

``HealthMonitor`` probes the database every ``health_probe_interval_ms`` — but only when the
last proof of health is older than that: while ingest commits keep succeeding they are the
proof, and a busy SQLite writer is not made to wait for the probe's write lock. The probe is a
committed write (``server.storage.db.probe``), so a database that answers but cannot store
(``DbFault.unwritable``) stays unavailable. After a disk-full failure on SQLite the probe
also wants more free space than there was when it failed (``DISK_FULL_MARGIN_BYTES`` more):
SQLite reuses its WAL file's space, so the probe's small write may succeed where the writer's
batch, which had to grow the file, did not.
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
from server.errors import ResourceExhausted, Unavailable
from server.storage.db import (
    SQLITE_MIN_FREE_BYTES,
    database_free_bytes,
    probe,
    unwritable,
)
from server.storage.faults import DbFault, classify

log = logging.getLogger(__name__)

HealthListener = Callable[[bool], Awaitable[None]]
DISK_FULL_MARGIN_BYTES = SQLITE_MIN_FREE_BYTES
# A disk-full failure with this much free space left was not the filesystem filling up (a
# quota, say): the probe then wants only SQLITE_MIN_FREE_BYTES.
DISK_FULL_AT_MOST_BYTES = 64 << 20

# Errors that mean "the database is unreachable or busy" rather than "this data is bad".
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    OSError,
    TimeoutError,
    ConnectionError,
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable or cannot be written (retry later),
    not bad data."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OUTAGE_ERRORS) or classify(exc).unwritable


def log_tick_failure(logger: logging.Logger, job: str, exc: BaseException) -> None:
    """One line for a background job's failed tick (the next tick tries again): a warning when
    the database is unavailable (the health monitor reports it) or no pooled connection is free
    (overload), a traceback for anything else."""
    if is_outage(exc):
        logger.warning("%s: tick skipped, the database is unavailable", job)
    elif isinstance(exc, ResourceExhausted):
        logger.warning("%s: tick skipped, no database connection free", job)
    else:
        logger.error("%s: tick failed", job, exc_info=exc)


def describe(fault: DbFault) -> str:
    """``fault`` for operators: "database unwritable: disk full", "database unavailable:
    locked"."""
    return f"database {'unwritable' if fault.unwritable else 'unavailable'}: {fault}"


@contextlib.contextmanager
def unavailable_on_outage(what: str) -> Iterator[None]:
    """Turn a database outage inside the block into ``Unavailable`` (retryable, 503/UNAVAILABLE)
    with no driver details; other errors pass through."""
    try:
        yield
    except Exception as exc:
        if not is_outage(exc):
            raise
        fault = classify(exc)
        log.warning("%s: %s", what, describe(fault))
        raise Unavailable(f"{describe(fault)}; retry later") from exc


async def assert_writable(engine: AsyncEngine, timeout_s: float) -> None:
    """Start-up check: one probe write. Unavailable naming the cause and the database (a SQLite
    path, a URL without its password) when the database cannot be written (disk full,
    read-only); other failures (locked, unreachable) are left to the health monitor."""
    try:
        await probe(engine, timeout_s)
    except Exception as exc:
        fault = classify(exc)
        if fault.unwritable:
            raise unwritable(engine.url, fault) from exc


class DatabaseHealth:
    """Is the database reachable and writable? Read ``available`` and ``fault``; report with
    ``report_*``."""

    def __init__(self) -> None:
        self.available = True
        self.fault: DbFault | None = None  # why not available (None while available)
        self.last_error: str | None = None  # the fault's name: never driver details
        self.last_ok = time.monotonic()
        self.failures = 0  # probes or commits that found the database unavailable
        self._published: bool | None = None
        self._listeners: list[HealthListener] = []
        self._changed = asyncio.Event()

    def add_listener(self, listener: HealthListener) -> None:
        """Await ``listener(available)`` on every change (and once with the current state)."""
        self._listeners.append(listener)
        self._published = None
        self._changed.set()

    @property
    def message(self) -> str:
        """What clients are told while unavailable (no driver details)."""
        if self.fault is None:
            return "the database is unavailable; retry later"
        return f"{describe(self.fault)}; retry later"

    def report_success(self, *, wrote: bool = True) -> None:
        """The database just did real work: a committed write (``wrote``, a commit or a probe)
        or only a read. A read does not clear a fault that only a write can (disk full,
        read-only)."""
        if not wrote and self.fault is not None and self.fault.unwritable:
            return
        self.last_ok = time.monotonic()
        if not self.available:
            log.info("database %s again (was: %s): resuming service", self._ok_word(), self.fault)
            self.available = True
            self.fault = None
            self.last_error = None
            self._changed.set()

    def _ok_word(self) -> str:
        return "writable" if self.fault is not None and self.fault.unwritable else "reachable"

    def report_failure(self, exc: BaseException) -> DbFault:
        """The database could not be reached, locked or written (a probe, a failed commit);
        returns the cause."""
        self.failures += 1
        fault = classify(exc)
        if fault is DbFault.OTHER and not self.available and self.fault is not None:
            fault = self.fault  # a vaguer failure while down keeps the named cause
        self.last_error = str(fault)
        if self.available or fault is not self.fault:
            detail = f" ({type(exc).__name__})" if fault is DbFault.OTHER else ""
            log.warning("%s%s; check-ins refused until it is back", describe(fault), detail)
            self.fault = fault
        if self.available:
            self.available = False
            self._changed.set()
        return fault

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
        self._free_when_full: int | None = None  # SQLite: free bytes when the disk was full

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
            await probe(self._engine, self._timeout, min_free_bytes=await self._min_free())
        except Exception as exc:  # any failure to reach, lock or write the database
            self.health.report_failure(exc)
        else:
            self._free_when_full = None
            self.health.report_success(wrote=True)
        return self.health.available

    async def _min_free(self) -> int:
        """The free space the SQLite probe wants: ``SQLITE_MIN_FREE_BYTES``, or after a
        disk-full failure the free space at that moment plus ``DISK_FULL_MARGIN_BYTES``."""
        if self.health.fault is not DbFault.DISK_FULL:
            self._free_when_full = None
        elif self._free_when_full is None:
            self._free_when_full = await asyncio.to_thread(database_free_bytes, self._engine)
        if self._free_when_full is None or self._free_when_full >= DISK_FULL_AT_MOST_BYTES:
            return SQLITE_MIN_FREE_BYTES
        return max(SQLITE_MIN_FREE_BYTES, self._free_when_full + DISK_FULL_MARGIN_BYTES)

    async def _run(self) -> None:
        health = self.health
        while True:
            if not health.available or time.monotonic() - health.last_ok >= self._interval:
                await self.probe_once()
            await health.publish()
            await health.wait_changed(self._interval)
