"""Rollouts: a migration spec revision run on the hosts a selector picks, in cumulative waves,
halted by gates. This module creates them, shows them and validates every state change people
ask for; ``server.services.rollout_scheduler`` moves them along.

Membership is fixed at creation: the selector is evaluated once (online hosts unless it says
otherwise), the hosts are ranked by ``sha256(rollout id + ":" + agent id)`` and wave *i* takes
the ranks up to its cumulative size; hosts and waves are stored, so nothing a re-evaluation or a
restart does can move a host to another wave.

State changes (who, when, why recorded in ``rollout_transitions``):

============  =====================================================================
from          to
============  =====================================================================
RUNNING       PAUSED (pause), HALTED (scheduler: a gate), COMPLETED (scheduler),
              ABORTED (abort), REVERTING (abort --revert)
PAUSED        RUNNING (resume), HALTED (scheduler), ABORTED, REVERTING
HALTED        RUNNING (resume with a reason: overrides the wave's gates), ABORTED, REVERTING
COMPLETED     REVERTING
ABORTED       REVERTING
REVERTING     REVERTED (scheduler)
============  =====================================================================

Every function takes the app's sessionmaker, owns its transaction, returns domain dataclasses
and raises ``server.errors``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import (
    RevertState,
    RolloutDetail,
    RolloutHostState,
    RolloutState,
    RolloutSummary,
    WaveCounts,
)
from server.errors import Conflict, InvalidArgument, NotFound
from server.selectors import parse_selector
from server.services.health import unavailable_on_outage
from server.services.runs import requester
from server.services.specs import revision_in
from server.services.targets import select_in
from server.services.webhook_events import enqueue_rollout_change
from server.storage import rollouts as rollouts_db
from server.waves import check_waves, wave_sizes

SCHEDULER = "scheduler"
DEFAULT_WAVES = ("1", "10%", "100%")
DEFAULT_WAVE_TIMEOUT_SECONDS = 1800
MAX_REASON = 500
MAX_HOSTS_SHOWN = 1000
MAX_LIST = 200

_TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    RolloutState.RUNNING: frozenset(
        {
            RolloutState.PAUSED,
            RolloutState.HALTED,
            RolloutState.COMPLETED,
            RolloutState.ABORTED,
            RolloutState.REVERTING,
        }
    ),
    RolloutState.PAUSED: frozenset(
        {RolloutState.RUNNING, RolloutState.HALTED, RolloutState.ABORTED, RolloutState.REVERTING}
    ),
    RolloutState.HALTED: frozenset(
        {RolloutState.RUNNING, RolloutState.ABORTED, RolloutState.REVERTING}
    ),
    RolloutState.COMPLETED: frozenset({RolloutState.REVERTING}),
    RolloutState.ABORTED: frozenset({RolloutState.REVERTING}),
    RolloutState.REVERTING: frozenset({RolloutState.REVERTED}),
    RolloutState.REVERTED: frozenset(),
}


def can_change(old: RolloutState, new: RolloutState) -> bool:
    """Whether ``old`` -> ``new`` is a transition a rollout may make."""
    return new in _TRANSITIONS[old]


def rank(rollout_id: str, agent_id: str) -> str:
    """The host's place in the rollout's order (hex sha256; waves take the lowest first)."""
    return hashlib.sha256(f"{rollout_id}:{agent_id}".encode()).hexdigest()


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise InvalidArgument(f"must be at most {MAX_REASON} printable characters", field="reason")
    return reason


def _rollout_id(rollout_id: str) -> str:
    try:
        return str(uuid.UUID(rollout_id.strip()))
    except ValueError:
        raise NotFound(f"no rollout {rollout_id} (see: flagpost-server rollout list)") from None


async def change_state(
    session: AsyncSession,
    rollout: RolloutSummary,
    new: RolloutState,
    by: str,
    reason: str,
    now: datetime,
    **columns: object,
) -> None:
    """Move ``rollout`` (locked by the caller) to ``new``: Conflict unless the table above
    allows it; the transition is recorded, and its webhook event (halted, completed, aborted)
    enqueued in the same transaction (``server.services.webhook_events``)."""
    if not can_change(rollout.state, new):
        raise Conflict(
            f"rollout {rollout.id} is {rollout.state.value}; it cannot go to {new.value}"
        )
    await rollouts_db.update_rollout(
        session, rollout.id, state=new.value, reason=reason, updated_at=now, **columns
    )
    await rollouts_db.insert_transition(
        session, rollout.id, rollout.state.value, new, now, by, reason
    )
    await enqueue_rollout_change(session, rollout, new, by, reason, now)


async def create_rollout(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    spec_id: str,
    by: str,
    *,
    revision: int | None = None,
    selector: Sequence[str] = (),
    waves: Sequence[str] = DEFAULT_WAVES,
    max_failure_rate: float | None = None,
    max_failures: int | None = None,
    soak_seconds: int = 0,
    wave_timeout_seconds: int = DEFAULT_WAVE_TIMEOUT_SECONDS,
) -> RolloutSummary:
    """A RUNNING rollout of the spec revision (default: latest) on the hosts ``selector``
    picks now. Without a gate, any failure halts it (``max_failures`` 0). InvalidArgument on a
    bad setting or a selector that picks no host; NotFound for an unknown spec or revision."""
    by = requester(by)
    labels = check_waves(waves)
    parsed = parse_selector(selector)
    if max_failure_rate is not None and not 0 <= max_failure_rate <= 1:
        raise InvalidArgument("must be between 0% and 100%", field="max_failure_rate")
    if max_failures is not None and max_failures < 0:
        raise InvalidArgument("must be 0 or more", field="max_failures")
    if max_failure_rate is None and max_failures is None:
        max_failures = 0
    if soak_seconds < 0:
        raise InvalidArgument("must be 0 or more seconds", field="soak_seconds")
    if wave_timeout_seconds < 1:
        raise InvalidArgument("must be at least 1 second", field="wave_timeout_seconds")
    rollout_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with unavailable_on_outage("create rollout"):
        async with sessions() as session, session.begin():
            spec = await revision_in(session, spec_id, revision)
            selection = await select_in(session, config, parsed)
            if selection.count == 0:
                raise InvalidArgument(
                    "picks no host (see: flagpost-server agent select EXPR); hosts count only "
                    "while online unless the selector says health=any",
                    field="select",
                )
            sizes = wave_sizes(labels, selection.count)
            ranked = sorted(
                (rank(rollout_id, agent_id), agent_id, hostname)
                for agent_id, hostname in selection.agents
            )
            hosts = []
            wave = 0
            for position, (key, agent_id, hostname) in enumerate(ranked):
                while position >= sizes[wave]:
                    wave += 1
                hosts.append(rollouts_db.NewHost(agent_id, hostname, wave, key))
            reason = f"created by {by}"
            await rollouts_db.insert_rollout(
                session,
                {
                    "id": rollout_id,
                    "spec_id": spec.spec_id,
                    "spec_revision": spec.revision,
                    "selector": list(selector),
                    "wave_labels": list(labels),
                    "wave_sizes": sizes,
                    "max_failure_rate": max_failure_rate,
                    "max_failures": max_failures,
                    "soak_seconds": soak_seconds,
                    "wave_timeout_seconds": wave_timeout_seconds,
                    "state": RolloutState.RUNNING.value,
                    "current_wave": 0,
                    "wave_started_at": None,
                    "wave_finished_at": None,
                    "override_wave": -1,
                    "revert_wave": -1,
                    "hosts_total": len(hosts),
                    "hosts_done": 0,
                    "settled": False,
                    "reason": reason,
                    "created_at": now,
                    "created_by": by,
                    "updated_at": now,
                },
            )
            await rollouts_db.insert_hosts(session, rollout_id, hosts)
            await rollouts_db.insert_transition(
                session, rollout_id, "", RolloutState.RUNNING, now, by, reason
            )
            created = await rollouts_db.get_rollout(session, rollout_id)
    assert created is not None
    return created


async def list_rollouts(
    sessions: async_sessionmaker[AsyncSession], limit: int = 100
) -> list[RolloutSummary]:
    """Rollouts, newest first."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidArgument(f"must be between 1 and {MAX_LIST}", field="limit")
    with unavailable_on_outage("list rollouts"):
        async with sessions() as session:
            return await rollouts_db.list_rollouts(session, limit=limit)


def waves_of(
    rollout: RolloutSummary,
    counts: dict[tuple[int, str], int],
    started: dict[int, datetime | None] | None = None,
) -> tuple[WaveCounts, ...]:
    """Per wave its own hosts by state (from ``rollouts_db.host_counts``)."""
    waves = []
    previous = 0
    for index, (label, size) in enumerate(
        zip(rollout.wave_labels, rollout.wave_sizes, strict=True)
    ):
        by_state = {state: counts.get((index, state.value), 0) for state in RolloutHostState}
        waves.append(
            WaveCounts(
                index=index,
                label=label,
                size=size,
                hosts=size - previous,
                counts=by_state,
                started_at=(started or {}).get(index),
                finished_at=None,
            )
        )
        previous = size
    return tuple(waves)


async def get_rollout(
    sessions: async_sessionmaker[AsyncSession],
    rollout_id: str,
    *,
    wave: int | None = None,
    states: Sequence[RolloutHostState] = (),
    limit: int = MAX_HOSTS_SHOWN,
) -> RolloutDetail:
    """One rollout with its waves' counts, its transitions and up to ``limit`` of its hosts
    (of one wave and in some states when asked). NotFound when unknown."""
    rollout_id = _rollout_id(rollout_id)
    with unavailable_on_outage("get rollout"):
        async with sessions() as session:
            rollout = await rollouts_db.get_rollout(session, rollout_id)
            if rollout is None:
                raise NotFound(f"no rollout {rollout_id} (see: flagpost-server rollout list)")
            counts = await rollouts_db.host_counts(session, rollout_id)
            history = await rollouts_db.transitions(session, rollout_id)
            hosts = await rollouts_db.list_hosts(
                session,
                rollout_id,
                waves=None if wave is None else [wave],
                states=states,
                limit=limit,
            )
            reverts = await rollouts_db.revert_counts(session, rollout_id)
    return RolloutDetail(
        rollout=rollout,
        waves=waves_of(rollout, counts),
        transitions=tuple(history),
        hosts=tuple(hosts),
        reverts={state: reverts.get(state.value, 0) for state in RevertState},
    )


_Change = Callable[[AsyncSession, RolloutSummary, datetime], Awaitable[None]]


async def _change(
    sessions: async_sessionmaker[AsyncSession], rollout_id: str, what: str, change: _Change
) -> RolloutSummary:
    rollout_id = _rollout_id(rollout_id)
    with unavailable_on_outage(what):
        async with sessions() as session, session.begin():
            rollout = await rollouts_db.lock_rollout(session, rollout_id)
            if rollout is None:
                raise NotFound(f"no rollout {rollout_id} (see: flagpost-server rollout list)")
            now = datetime.now(UTC)
            await change(session, rollout, now)
            changed = await rollouts_db.get_rollout(session, rollout_id)
    assert changed is not None
    return changed


async def pause(
    sessions: async_sessionmaker[AsyncSession], rollout_id: str, by: str, reason: str = ""
) -> RolloutSummary:
    """RUNNING -> PAUSED: no new host starts; started runs finish and the gates still apply."""
    by = requester(by)
    reason = _reason(reason) or f"paused by {by}"

    async def change(session: AsyncSession, rollout: RolloutSummary, now: datetime) -> None:
        if rollout.state == RolloutState.PAUSED:
            return
        if rollout.state != RolloutState.RUNNING:
            raise Conflict(f"rollout {rollout.id} is {rollout.state.value}; only RUNNING pauses")
        await change_state(session, rollout, RolloutState.PAUSED, by, reason, now)

    return await _change(sessions, rollout_id, "pause rollout", change)


async def resume(
    sessions: async_sessionmaker[AsyncSession], rollout_id: str, by: str, reason: str = ""
) -> RolloutSummary:
    """PAUSED -> RUNNING; HALTED -> RUNNING only with a reason: an override of the halted
    wave's gates, recorded (the next waves' gates apply again)."""
    by = requester(by)
    reason = _reason(reason)

    async def change(session: AsyncSession, rollout: RolloutSummary, now: datetime) -> None:
        if rollout.state == RolloutState.PAUSED:
            await change_state(
                session, rollout, RolloutState.RUNNING, by, reason or f"resumed by {by}", now
            )
            return
        if rollout.state != RolloutState.HALTED:
            raise Conflict(
                f"rollout {rollout.id} is {rollout.state.value}; only PAUSED or HALTED resumes"
            )
        if not reason:
            raise InvalidArgument(
                "resuming a halted rollout overrides its gate: say why",
                field="reason",
            )
        await change_state(
            session,
            rollout,
            RolloutState.RUNNING,
            by,
            f"gate of wave {rollout.current_wave + 1} overridden by {by}: {reason}",
            now,
            override_wave=rollout.current_wave,
        )

    return await _change(sessions, rollout_id, "resume rollout", change)


async def abort(
    sessions: async_sessionmaker[AsyncSession],
    rollout_id: str,
    by: str,
    *,
    revert: bool = False,
    reason: str = "",
) -> RolloutSummary:
    """Stop the rollout for good: no new host starts, actions no agent took yet are
    withdrawn (those hosts are skipped), started runs finish. With ``revert``, every host it
    migrated then reverts from its backup, newest wave first (REVERTING, then REVERTED)."""
    by = requester(by)
    reason = _reason(reason)

    async def change(session: AsyncSession, rollout: RolloutSummary, now: datetime) -> None:
        if rollout.state in (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED):
            await skip_unstarted(session, rollout.id, now)
        target = RolloutState.REVERTING if revert else RolloutState.ABORTED
        why = reason or (f"aborted and reverted by {by}" if revert else f"aborted by {by}")
        await change_state(
            session,
            rollout,
            target,
            by,
            why,
            now,
            settled=False,
            revert_wave=len(rollout.wave_sizes) - 1 if revert else -1,
        )

    return await _change(sessions, rollout_id, "abort rollout", change)


async def skip_unstarted(session: AsyncSession, rollout_id: str, now: datetime) -> None:
    """Withdraw the actions of the rollout's pending hosts no agent took yet, and mark those
    hosts and every waiting one SKIPPED."""
    pending = await rollouts_db.list_hosts(
        session, rollout_id, states=[RolloutHostState.PENDING, RolloutHostState.WAITING]
    )
    actions = await rollouts_db.action_ids(session, rollout_id, [h.agent_id for h in pending])
    withdrawn = await rollouts_db.withdraw_actions(session, list(actions.values()))
    skipped = [
        h.agent_id
        for h in pending
        if h.state == RolloutHostState.WAITING or actions.get(h.agent_id) in withdrawn
    ]
    await rollouts_db.set_hosts(
        session,
        rollout_id,
        [
            {
                "agent_id": agent_id,
                "state": RolloutHostState.SKIPPED.value,
                "finished_at": now,
                "error": "not started: the rollout was aborted",
            }
            for agent_id in skipped
        ],
    )
