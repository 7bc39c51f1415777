"""Retention: prune events, runs (with their steps and log lines) and old actions.

Limits (``ServerConfig``; 0 disables one): ``retention_days`` (events by ``occurred_at``, runs
by their last update, actions acknowledged or expired that long ago), ``max_events_per_agent``
and ``max_runs_per_agent`` (the newest are kept). A run awaiting input is never pruned (it still
counts towards its agent's cap).

Every transaction deletes at most ``retention_batch_size`` rows, so pruning a large backlog
never holds a long lock on a live server, and is followed by a pause of
``retention_pause_ratio`` times its duration, so a prune of millions of rows leaves the
database (and on a small machine, the CPU) to ingest half the time (BENCHMARKS.md, "Retention
during ingest"). :func:`prune` is called by the background job
(:class:`RetentionJob`, every ``retention_interval_minutes``) and by ``flagpost-server prune``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from time import monotonic

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.services.health import unavailable_on_outage
from server.storage import auth_changes as auth_changes_store
from server.storage import inputs as inputs_store
from server.storage import retention as store
from server.storage import users as users_store

log = logging.getLogger(__name__)

FIRST_RUN_DELAY_SECONDS = 60.0
RUNS_PER_ROUND = 100
AGENTS_PER_CHECK = 500
# Far beyond server.services.agents.AUTH_CACHE_TTL: no cache still needs an older change.
AUTH_CHANGES_KEPT = timedelta(hours=1)


@dataclass
class PruneResult:
    """What a prune deleted so far (also the progress report)."""

    events: int = 0
    runs: int = 0
    log_lines: int = 0
    actions: int = 0
    answers: int = 0  # undeliverable encrypted answers (run_inputs)
    sessions: int = 0  # expired web sessions
    phase: str = ""

    @property
    def total(self) -> int:
        return (
            self.events + self.runs + self.log_lines + self.actions + self.answers + self.sessions
        )


Progress = Callable[[PruneResult], None]
pause = asyncio.sleep  # the wait after a transaction (a name of its own, for the tests)


@dataclass
class _Pace:
    """Times each transaction and waits ``ratio`` times as long after it."""

    ratio: float

    @contextlib.asynccontextmanager
    async def transaction(
        self, sessions: async_sessionmaker[AsyncSession]
    ) -> AsyncIterator[AsyncSession]:
        started = monotonic()
        async with sessions() as session, session.begin():
            yield session
        if self.ratio > 0:
            await pause((monotonic() - started) * self.ratio)


async def _delete_runs(
    sessions: async_sessionmaker[AsyncSession],
    run_ids: list[str],
    batch: int,
    result: PruneResult,
    progress: Progress | None,
    pace: _Pace,
) -> None:
    while True:  # the logs first, one bounded transaction at a time
        async with pace.transaction(sessions) as session:
            deleted = await store.delete_run_logs(session, run_ids, batch)
        result.log_lines += deleted
        if progress is not None:
            progress(result)
        if deleted < batch:
            break
    async with pace.transaction(sessions) as session:
        result.runs += await store.delete_runs(session, run_ids)
    if progress is not None:
        progress(result)


async def _drain(
    step: Callable[[AsyncSession], Awaitable[int]],
    sessions: async_sessionmaker[AsyncSession],
    batch: int,
    result: PruneResult,
    field: str,
    progress: Progress | None,
    pace: _Pace,
) -> None:
    while True:
        async with pace.transaction(sessions) as session:
            deleted = await step(session)
        setattr(result, field, getattr(result, field) + deleted)
        if progress is not None:
            progress(result)
        if deleted < batch:
            return


async def _agents_over(
    sessions: async_sessionmaker[AsyncSession],
    agents: list[str],
    cap: int,
    check: Callable[[AsyncSession, Sequence[str], int], Awaitable[list[str]]],
) -> list[str]:
    """The agents over a per-agent cap, checked ``AGENTS_PER_CHECK`` at a time: one query and
    session per agent kept the event loop busy for seconds at 10,000 agents, most of them far
    below the cap."""
    over: list[str] = []
    for start in range(0, len(agents), AGENTS_PER_CHECK):
        async with sessions() as session:
            over.extend(await check(session, agents[start : start + AGENTS_PER_CHECK], cap))
    return over


async def _events_over_cap(session: AsyncSession, *, agent_id: str, cap: int, limit: int) -> int:
    return await store.delete_events_over_cap(session, agent_id, cap, limit)


async def prune(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> PruneResult:
    """Prune everything beyond the configured limits as of ``now``; ``progress`` is called
    after every transaction with the running totals. Unavailable when the database is down."""
    now = now or datetime.now(UTC)
    batch = max(1, config.retention_batch_size)
    pace = _Pace(config.retention_pause_ratio)
    result = PruneResult()
    cutoff = now - timedelta(days=config.retention_days) if config.retention_days > 0 else None
    with unavailable_on_outage("prune"):
        if cutoff is not None:
            result.phase = "events by age"
            await _drain(
                lambda s: store.delete_events_before(s, cutoff, batch),
                sessions,
                batch,
                result,
                "events",
                progress,
                pace,
            )
        async with sessions() as session:
            agents = await store.agent_ids(session)
        if config.max_events_per_agent > 0:
            result.phase = "events over the per-agent cap"
            over = await _agents_over(
                sessions, agents, config.max_events_per_agent, store.agents_over_event_cap
            )
            for agent_id in over:
                await _drain(
                    functools.partial(
                        _events_over_cap,
                        agent_id=agent_id,
                        cap=config.max_events_per_agent,
                        limit=batch,
                    ),
                    sessions,
                    batch,
                    result,
                    "events",
                    progress,
                    pace,
                )
        if cutoff is not None:
            result.phase = "runs by age"
            while True:
                async with sessions() as session:
                    run_ids = await store.runs_before(session, cutoff, RUNS_PER_ROUND)
                if run_ids:
                    await _delete_runs(sessions, run_ids, batch, result, progress, pace)
                if len(run_ids) < RUNS_PER_ROUND:
                    break
        if config.max_runs_per_agent > 0:
            result.phase = "runs over the per-agent cap"
            over = await _agents_over(
                sessions, agents, config.max_runs_per_agent, store.agents_over_run_cap
            )
            for agent_id in over:
                while True:
                    async with sessions() as session:
                        run_ids = await store.runs_over_cap(
                            session, agent_id, config.max_runs_per_agent, RUNS_PER_ROUND
                        )
                    if run_ids:
                        await _delete_runs(sessions, run_ids, batch, result, progress, pace)
                    if len(run_ids) < RUNS_PER_ROUND or not run_ids:
                        break
        if cutoff is not None:
            result.phase = "actions"
            await _drain(
                lambda s: store.delete_old_actions(s, cutoff, batch),
                sessions,
                batch,
                result,
                "actions",
                progress,
                pace,
            )
        # Whatever retention_days says: answers that can no longer be delivered (their action
        # expired, their agent was revoked), expired web sessions and authentication changes
        # every server process has read long ago go at every prune.
        result.phase = "undeliverable answers, expired sessions, old authentication changes"
        async with sessions() as session, session.begin():
            result.answers += await inputs_store.delete_undeliverable(session, now)
            result.sessions += await users_store.delete_expired_sessions(session, now)
            await auth_changes_store.delete_changes_before(session, now - AUTH_CHANGES_KEPT)
    result.phase = "done"
    if progress is not None:
        progress(result)
    return result


class RetentionJob:
    """Background pruning: first after ``first_delay`` seconds, then every
    ``retention_interval_minutes`` (not started when that is 0). Errors are logged and the job
    carries on at the next interval."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        config: ServerConfig,
        first_delay: float = FIRST_RUN_DELAY_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._config = config
        self._first_delay = first_delay
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # completed prunes (for tests and metrics)
        self.last: PruneResult | None = None

    def start(self) -> None:
        """Start the job on the running loop (idempotent; no-op when the interval is 0)."""
        if self._task is None and self._config.retention_interval_minutes > 0:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flagpost-retention"
            )

    async def stop(self) -> None:
        """Cancel the job (a prune in progress stops between transactions)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        await asyncio.sleep(self._first_delay)
        interval = self._config.retention_interval_minutes * 60
        while True:
            try:
                result = await prune(self._sessions, self._config)
                self.runs += 1
                self.last = result
                if result.total:
                    log.info(
                        "retention: pruned %d events, %d runs, %d log lines, %d actions, "
                        "%d undeliverable answers, %d expired sessions",
                        result.events,
                        result.runs,
                        result.log_lines,
                        result.actions,
                        result.answers,
                        result.sessions,
                    )
            except Exception:  # keep the job alive; the next interval tries again
                log.exception("retention: prune failed")
            await asyncio.sleep(interval)
