"""Runs service: lists, one run with progress and ETA, and what people ask of runs (request a
run, cancel one), queued as actions the agent receives with its next check-in.

Every function takes the app's sessionmaker, owns its transaction, returns domain dataclasses and
raises ``server.errors``: NotFound, Conflict, InvalidArgument, and Unavailable when the database
is unreachable.

ETA: while a run is active, the average duration of the steps this run has completed times the
steps remaining (``eta_basis="this_run"``); before any step completed, the average duration of
each remaining step over the latest succeeded runs of the same migration
(``"past_runs"``); otherwise unknown (None). A run awaiting input has no ETA.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import (
    ActionKind,
    BulkOutcome,
    EtaBasis,
    PendingAction,
    RunDetail,
    RunFilter,
    RunPage,
    RunState,
    RunStep,
    RunSummary,
)
from server.errors import Conflict, InvalidArgument, NotFound
from server.services.bus import EventBus
from server.services.health import unavailable_on_outage
from server.services.targets import MAX_BULK_AGENTS, Targets, resolve
from server.storage import actions as actions_store
from server.storage import agents as agents_store
from server.storage import logs as logs_store
from server.storage import notify
from server.storage import runs as runs_store

MAX_LIST_LIMIT = 500
MAX_BY = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(run: RunSummary) -> str:
    """The keyset position just after ``run`` (``<microseconds since epoch>_<run id>``)."""
    micros = (run.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{run.id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; InvalidArgument (field ``before``) when malformed."""
    micros, sep, run_id = cursor.partition("_")
    if not sep or not micros.isascii() or not micros.isdigit() or not 0 < len(run_id) <= 36:
        raise InvalidArgument("is not a valid cursor", field="before")
    try:
        created = _EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        raise InvalidArgument("is not a valid cursor", field="before") from None
    return created, run_id


async def list_runs(sessions: async_sessionmaker[AsyncSession], f: RunFilter) -> RunPage:
    """Runs matching ``f``, newest first, one keyset page (``next_before`` for the next)."""
    if not 1 <= f.limit <= MAX_LIST_LIMIT:
        raise InvalidArgument(f"must be between 1 and {MAX_LIST_LIMIT}", field="limit")
    before = decode_cursor(f.before) if f.before else None
    with unavailable_on_outage("list runs"):
        async with sessions() as session:
            runs = await runs_store.list_runs(
                session, states=f.states, agent_id=f.agent_id, before=before, limit=f.limit + 1
            )
    more = len(runs) > f.limit
    runs = runs[: f.limit]
    return RunPage(runs=runs, next_before=encode_cursor(runs[-1]) if more else None)


def _eta(
    run: RunSummary, steps: Sequence[RunStep], past: dict[int, float] | None
) -> tuple[float | None, str]:
    if run.state not in (RunState.RUNNING, RunState.PENDING) or run.steps_total <= 0:
        return None, ""
    remaining = max(0, run.steps_total - run.steps_done)
    if remaining == 0:
        return 0.0, EtaBasis.THIS_RUN
    done = [s.duration_ms for s in steps if s.status == "succeeded" and s.duration_ms > 0]
    if done:
        return sum(done) / len(done) * remaining / 1000, EtaBasis.THIS_RUN
    if past:
        overall = sum(past.values()) / len(past)
        finished = {s.index for s in steps if s.status in ("succeeded", "rolled_back")}
        todo = [i for i in range(run.steps_total) if i not in finished][:remaining]
        return sum(past.get(i, overall) for i in todo) / 1000, EtaBasis.PAST_RUNS
    return None, ""


async def get_run(
    sessions: async_sessionmaker[AsyncSession], run_id: str, now: datetime | None = None
) -> RunDetail:
    """One run with its steps, progress, ETA and log line count. NotFound when unknown."""
    with unavailable_on_outage("get run"):
        async with sessions() as session:
            run = await runs_store.get_run(session, run_id.lower())
            if run is None:
                raise NotFound(f"no run {run_id}")
            steps = await runs_store.get_steps(session, run.id)
            lines = await logs_store.count_lines(session, run.id)
            past = None
            if run.migration_id and not any(
                s.status == "succeeded" and s.duration_ms > 0 for s in steps
            ):
                past = await runs_store.past_step_durations(session, run.migration_id, run.id)
    if run.steps_total > 0:
        progress = min(1.0, run.steps_done / run.steps_total)
    else:
        progress = 1.0 if run.state == RunState.SUCCEEDED else 0.0
    eta, basis = _eta(run, steps, past)
    return RunDetail(
        run=run,
        steps=tuple(steps),
        progress=progress,
        eta_seconds=eta,
        eta_basis=basis,
        log_lines=lines,
        cancel_pending=run.cancel_requested_at is not None and not run.terminal,
    )


async def count_runs_by_state(
    sessions: async_sessionmaker[AsyncSession], agent_id: str | None = None
) -> dict[RunState, int]:
    """How many runs are in each state (every state present), of one agent if given."""
    with unavailable_on_outage("count runs"):
        async with sessions() as session:
            counts = await runs_store.count_by_state(session, agent_id)
    return {state: counts.get(state.value, 0) for state in RunState}


async def latest_runs(
    sessions: async_sessionmaker[AsyncSession], agent_ids: Sequence[str]
) -> dict[str, RunSummary]:
    """The newest run of each agent in ``agent_ids`` (agents without runs are absent)."""
    if not agent_ids:
        return {}
    with unavailable_on_outage("latest runs"):
        async with sessions() as session:
            return await runs_store.latest_runs(session, list(agent_ids))


def requester(by: str) -> str:
    """``by`` (who asks, from the web) checked: InvalidArgument (field ``by``) unless it is 1 to
    ``MAX_BY`` printable characters; returned stripped."""
    by = by.strip()
    if not by or len(by) > MAX_BY or not by.isprintable():
        raise InvalidArgument(f"must be 1 to {MAX_BY} printable characters", field="by")
    return by


def new_action(
    config: ServerConfig,
    agent_id: str,
    kind: ActionKind,
    params: dict[str, str],
    by: str,
    now: datetime,
) -> PendingAction:
    """A new action for ``agent_id`` (random id and nonce, expiring after
    ``action_ttl_seconds``), not yet stored (``actions_store.create_action``)."""
    return PendingAction(
        action_id=str(uuid.uuid4()),
        agent_id=agent_id,
        kind=kind,
        params=params,
        created_at=now,
        expires_at=now + timedelta(seconds=config.action_ttl_seconds),
        delivered_at=None,
        acknowledged_at=None,
        requested_by=by,
        nonce=secrets.token_hex(16),
    )


async def request_run(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    agent_id: str,
    by: str,
    migration_id: str | None = None,
) -> PendingAction:
    """Queue a ``run_migration`` action for ``agent_id`` (delivered with its next check-in;
    the run appears when the agent reports it, carrying the action id). NotFound for an unknown
    agent, Conflict for a revoked one."""
    by = requester(by)
    params: dict[str, str] = {}
    if migration_id:
        if len(migration_id) > 128 or not migration_id.isprintable():
            raise InvalidArgument("must be at most 128 printable characters", field="migration_id")
        params["migration_id"] = migration_id
    now = datetime.now(UTC)
    with unavailable_on_outage("request run"):
        async with sessions() as session, session.begin():
            agent = await agents_store.get_agent(session, agent_id)
            if agent is None:
                raise NotFound(f"no agent {agent_id}")
            if agent.revoked:
                raise Conflict(f"agent {agent_id} is revoked")
            action = new_action(config, agent.id, ActionKind.RUN_MIGRATION, params, by, now)
            await actions_store.create_action(session, action)
    return action


async def request_cancel(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    run_id: str,
    by: str,
    *,
    bus: EventBus | None = None,
) -> PendingAction:
    """Queue a ``cancel_run`` action for the run's agent (it stops at the next step boundary,
    rolls back and reports CANCELLED) and record who asked. NotFound for an unknown run,
    Conflict when it already ended. While a cancel of this run is pending, asking again returns
    that same action. On PostgreSQL, run streams of every replica are notified at commit; after
    the commit this wakes ``bus``'s run streams (this process), so the run's open pages show
    "cancel requested" at once."""
    action = await _queue_cancel(sessions, config, run_id, by)
    if bus is not None:
        bus.publish_runs(sorted({run_id, action.params.get("run_id", run_id)}))
    return action


async def _queue_cancel(
    sessions: async_sessionmaker[AsyncSession], config: ServerConfig, run_id: str, by: str
) -> PendingAction:
    by = requester(by)
    now = datetime.now(UTC)
    with unavailable_on_outage("cancel run"):
        async with sessions() as session, session.begin():
            run = await runs_store.lock_run(session, run_id.lower())
            if run is None:
                raise NotFound(f"no run {run_id}")
            if run.terminal:
                raise Conflict(f"run {run.id} already ended ({run.state.value})")
            for action in await actions_store.open_actions(
                session, run.agent_id, now, ActionKind.CANCEL_RUN
            ):
                if action.params.get("run_id") == run.id:
                    return action
            action = new_action(
                config, run.agent_id, ActionKind.CANCEL_RUN, {"run_id": run.id}, by, now
            )
            await actions_store.create_action(session, action)
            await runs_store.mark_cancel_requested(session, run.id, by, now)
            await notify.announce_runs_changed(session, [run.id])  # other replicas' streams
    return action


async def cancel_runs_of(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    targets: Targets,
    by: str,
    *,
    bus: EventBus | None = None,
) -> BulkOutcome:
    """Ask every active run of the agents ``targets`` addresses to cancel, as
    :func:`request_cancel` does for one: ``changed`` counts the runs asked now (runs with a
    cancel already requested are left alone)."""
    by = requester(by)
    ids = await resolve(sessions, config, targets, MAX_BULK_AGENTS)
    now = datetime.now(UTC)
    with unavailable_on_outage("cancel runs"):
        async with sessions() as session, session.begin():
            runs = await runs_store.lock_active_runs(session, ids)
            todo = [run.id for run in runs if run.cancel_requested_at is None]
            agent_of = {run.id: run.agent_id for run in runs}
            actions = [
                new_action(
                    config, agent_of[run_id], ActionKind.CANCEL_RUN, {"run_id": run_id}, by, now
                )
                for run_id in todo
            ]
            await actions_store.create_actions(session, actions)
            await runs_store.mark_cancels_requested(session, todo, by, now)
            await notify.announce_runs_changed(session, todo)  # other replicas' streams
    if bus is not None and todo:
        bus.publish_runs(todo)
    return BulkOutcome(len(ids), len(todo))
