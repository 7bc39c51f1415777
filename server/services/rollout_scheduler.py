"""The rollout scheduler: moves every unsettled rollout along, one transaction per rollout per
tick (every ``rollout_tick_seconds``).

A tick, holding the rollout's row (``rollouts_db.lock_rollout``; on PostgreSQL ``SKIP LOCKED``,
so with several replicas exactly one works on a rollout at a time, and hosts are started in
the same transaction that records them started: none twice, even across a kill -9):

1. learns what became of its started hosts: the run their action produced (SUCCEEDED, FAILED /
   PARTIAL / CANCELLED: failed, AWAITING_INPUT: blocked) or the detection event answering it
   (already at the target: succeeded; cannot tell the version: failed). A host still pending or
   running ``wave_timeout_seconds`` after it was started is failed, or *not reached* when its
   agent never took the action (the action is withdrawn); a blocked host waits for its answer
   and holds its wave open;
2. checks the current wave's gates (unless an admin overrode them on resume): a breach halts
   the rollout at once and withdraws the actions no agent took yet (those hosts wait again;
   runs already started finish);
3. RUNNING: starts the current wave (after the previous one's soak time), and when every host of
   it finished, ends it: the next wave, or COMPLETED after the last;
4. REVERTING: asks every host of the reverting wave that the rollout migrated to revert, waits
   for their revert runs, then the wave before; REVERTED after the first wave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import (
    FAILED_HOST_STATES,
    OPEN_HOST_STATES,
    TERMINAL_ROLLOUT_STATES,
    ActionKind,
    EventStatus,
    PendingAction,
    RevertState,
    RolloutHostState,
    RolloutState,
    RolloutSummary,
    RunState,
)
from server.services.health import log_tick_failure
from server.services.ingest import CommittedBatch
from server.services.rollouts import SCHEDULER, change_state, waves_of
from server.services.runs import new_action
from server.services.specs import revision_in, spec_params
from server.storage import actions as actions_store
from server.storage import rollouts as rollouts_db

log = logging.getLogger(__name__)

MIN_TICK_GAP_SECONDS = 0.05
_FAILED_RUNS = frozenset({RunState.FAILED, RunState.PARTIAL, RunState.CANCELLED})


def _host_outcome(
    host: rollouts_db.OpenHost, answer: tuple[str, str] | None
) -> tuple[RolloutHostState, str]:
    if host.run_state is not None:
        if host.run_state == RunState.SUCCEEDED:
            return RolloutHostState.SUCCEEDED, ""
        if host.run_state in _FAILED_RUNS:
            return RolloutHostState.FAILED, host.run_error or f"run {host.run_state.value}"
        if host.run_state == RunState.AWAITING_INPUT:
            return RolloutHostState.BLOCKED, ""
        return RolloutHostState.RUNNING, ""
    if answer is not None:
        status, error = answer
        if status == EventStatus.NOT_NEEDED.value:
            return RolloutHostState.SUCCEEDED, "already at the target"
        if status == EventStatus.FAILED.value:
            return RolloutHostState.FAILED, error or "detection failed"
    if host.delivered_at is not None:
        return RolloutHostState.RUNNING, ""
    return RolloutHostState.PENDING, ""


class _Tick:
    """One tick of one rollout, inside its transaction."""

    def __init__(
        self, session: AsyncSession, config: ServerConfig, rollout: RolloutSummary, now: datetime
    ) -> None:
        self.session = session
        self.config = config
        self.rollout = rollout
        self.now = now
        self.changed = False

    async def outcomes(self) -> None:
        opens = await rollouts_db.open_hosts(self.session, self.rollout.id)
        asked = [h.action_id for h in opens if h.run_state is None and h.delivered_at is not None]
        answers = await rollouts_db.detection_answers(self.session, asked) if asked else {}
        timeout = timedelta(seconds=self.rollout.wave_timeout_seconds)
        changes: list[dict[str, Any]] = []
        unreached: list[rollouts_db.OpenHost] = []
        for host in opens:
            state, error = _host_outcome(host, answers.get(host.action_id))
            timed_out = host.started_at is not None and self.now >= host.started_at + timeout
            if state in (RolloutHostState.PENDING, RolloutHostState.RUNNING) and timed_out:
                if host.delivered_at is None:
                    unreached.append(host)
                    continue
                state = RolloutHostState.FAILED
                error = f"did not finish within the wave timeout ({timeout})"
            if state == host.state and not host.run_id:
                continue
            changes.append(self._host_change(host, state, error))
        if unreached:
            withdrawn = await rollouts_db.withdraw_actions(
                self.session, [h.action_id for h in unreached]
            )
            for host in unreached:
                if host.action_id in withdrawn:
                    error = f"offline: never took the action within the wave timeout ({timeout})"
                    changes.append(self._host_change(host, RolloutHostState.NOT_REACHED, error))
                else:  # taken at the last moment: it runs, and counts as late
                    changes.append(
                        self._host_change(
                            host,
                            RolloutHostState.FAILED,
                            f"did not finish within the wave timeout ({timeout})",
                        )
                    )
        if changes:
            await rollouts_db.set_hosts(self.session, self.rollout.id, changes)
            self.changed = True

    def _host_change(
        self, host: rollouts_db.OpenHost, state: RolloutHostState, error: str
    ) -> dict[str, Any]:
        final = state not in OPEN_HOST_STATES
        return {
            "agent_id": host.agent_id,
            "state": state.value,
            "error": error,
            "run_id": host.run_id,
            "finished_at": self.now if final else None,
        }

    async def counts(self) -> dict[tuple[int, str], int]:
        return await rollouts_db.host_counts(self.session, self.rollout.id)

    async def _refresh(self) -> None:
        fresh = await rollouts_db.get_rollout(self.session, self.rollout.id)
        assert fresh is not None
        self.rollout = fresh

    async def gates(self, counts: dict[tuple[int, str], int]) -> bool:
        """Halt on a breach of the current wave's gates; True when it halted."""
        rollout = self.rollout
        if rollout.state not in (RolloutState.RUNNING, RolloutState.PAUSED):
            return False
        wave = waves_of(rollout, counts)[rollout.current_wave]
        if rollout.override_wave == wave.index or wave.hosts == 0:
            return False
        if not rollout.gates.breached(wave.failed, wave.hosts):
            return False
        reason = (
            f"wave {wave.index + 1} ({wave.label}): {wave.failed} of {wave.hosts} hosts failed "
            f"({wave.failure_rate:.1%}), beyond its gate ({_gate_text(rollout)})"
        )
        await self._withdraw_pending(rollout.current_wave)
        await change_state(self.session, rollout, RolloutState.HALTED, SCHEDULER, reason, self.now)
        log.warning("rollout %s halted: %s", rollout.id, reason)
        self.changed = True
        await self._refresh()
        return True

    async def _withdraw_pending(self, wave: int) -> None:
        """Actions of the wave no agent took yet are withdrawn; their hosts wait again."""
        pending = await rollouts_db.list_hosts(
            self.session, self.rollout.id, waves=[wave], states=[RolloutHostState.PENDING]
        )
        actions = await rollouts_db.action_ids(
            self.session, self.rollout.id, [h.agent_id for h in pending]
        )
        withdrawn = await rollouts_db.withdraw_actions(self.session, list(actions.values()))
        await rollouts_db.set_hosts(
            self.session,
            self.rollout.id,
            [
                {
                    "agent_id": agent_id,
                    "state": RolloutHostState.WAITING.value,
                    "action_id": "",
                    "started_at": None,
                }
                for agent_id, action_id in actions.items()
                if action_id in withdrawn
            ],
        )

    async def advance(self, counts: dict[tuple[int, str], int]) -> None:
        """RUNNING: start the current wave once its turn came (and its hosts a halt sent back
        to waiting, after a resume); end the wave when all of its hosts finished."""
        while self.rollout.state == RolloutState.RUNNING:
            rollout = self.rollout
            index = rollout.current_wave
            if rollout.wave_started_at is None:
                if rollout.next_wave_at is not None and self.now < rollout.next_wave_at:
                    return  # soaking
                await self._start(index)
                return
            if counts.get((index, RolloutHostState.WAITING.value), 0):
                await self._start(index)
                return
            if any(counts.get((index, state.value), 0) for state in OPEN_HOST_STATES):
                return
            self.changed = True
            if index + 1 >= len(rollout.wave_sizes):
                await change_state(
                    self.session,
                    rollout,
                    RolloutState.COMPLETED,
                    SCHEDULER,
                    f"all {len(rollout.wave_sizes)} waves finished within their gates",
                    self.now,
                )
                await self._refresh()
                return
            await rollouts_db.update_rollout(
                self.session,
                rollout.id,
                current_wave=index + 1,
                wave_started_at=None,
                wave_finished_at=self.now,
                updated_at=self.now,
            )
            await self._refresh()

    async def _start(self, wave: int) -> None:
        rollout = self.rollout
        hosts = await rollouts_db.hosts_to_start(self.session, rollout.id, wave)
        spec = await revision_in(self.session, rollout.spec_id, rollout.spec_revision)
        params = spec_params(spec)
        by = f"{rollout.created_by} (rollout {rollout.id[:8]})"[:128]
        # An action is good for its wave only: past the wave timeout its host is not reached.
        expires = self.now + timedelta(seconds=rollout.wave_timeout_seconds)
        actions: list[PendingAction] = [
            replace(
                new_action(self.config, h.agent_id, ActionKind.RUN_MIGRATION, params, by, self.now),
                expires_at=expires,
            )
            for h in hosts
        ]
        await actions_store.create_actions(self.session, actions)
        await rollouts_db.set_hosts(
            self.session,
            rollout.id,
            [
                {
                    "agent_id": action.agent_id,
                    "state": RolloutHostState.PENDING.value,
                    "action_id": action.action_id,
                    "started_at": self.now,
                }
                for action in actions
            ],
        )
        if rollout.wave_started_at is None:
            await rollouts_db.update_rollout(
                self.session, rollout.id, wave_started_at=self.now, updated_at=self.now
            )
        log.info("rollout %s: wave %d started %d hosts", rollout.id, wave + 1, len(actions))
        self.changed = True

    async def revert(self, counts: dict[tuple[int, str], int]) -> None:
        """REVERTING: the reverting wave's migrated hosts revert; then the wave before."""
        while self.rollout.state == RolloutState.REVERTING:
            rollout = self.rollout
            wave = rollout.revert_wave
            if wave < 0:
                await change_state(
                    self.session,
                    rollout,
                    RolloutState.REVERTED,
                    SCHEDULER,
                    "every host the rollout migrated was asked to revert and answered",
                    self.now,
                )
                self.changed = True
                await self._refresh()
                return
            await self._revert_outcomes(wave)
            migrated = await rollouts_db.list_hosts(
                self.session, rollout.id, waves=[wave], states=[RolloutHostState.SUCCEEDED]
            )
            todo = [h for h in migrated if h.run_id and h.revert_state == RevertState.NONE]
            if todo:
                await self._queue_reverts(todo)
                return
            if any(h.revert_state == RevertState.QUEUED for h in migrated):
                return
            running = (RolloutHostState.PENDING, RolloutHostState.RUNNING)
            if any(counts.get((wave, state.value), 0) for state in running):
                return  # a run of this wave may still migrate its host: wait for it
            await rollouts_db.update_rollout(
                self.session, rollout.id, revert_wave=wave - 1, updated_at=self.now
            )
            self.changed = True
            await self._refresh()

    async def _queue_reverts(self, hosts: list[Any]) -> None:
        rollout = self.rollout
        by = f"{rollout.created_by} (rollout {rollout.id[:8]} revert)"[:128]
        actions = [
            new_action(
                self.config, h.agent_id, ActionKind.REVERT_RUN, {"run_id": h.run_id}, by, self.now
            )
            for h in hosts
        ]
        await actions_store.create_actions(self.session, actions)
        await rollouts_db.set_hosts(
            self.session,
            rollout.id,
            [
                {
                    "agent_id": action.agent_id,
                    "revert_state": RevertState.QUEUED.value,
                    "revert_action_id": action.action_id,
                }
                for action in actions
            ],
        )
        log.info(
            "rollout %s: wave %d: %d hosts asked to revert",
            rollout.id,
            rollout.revert_wave + 1,
            len(actions),
        )
        self.changed = True

    async def _revert_outcomes(self, wave: int) -> None:
        timeout = timedelta(seconds=self.rollout.wave_timeout_seconds)
        changes = []
        for host in await rollouts_db.queued_reverts(self.session, self.rollout.id, wave):
            if host.run_state == RunState.SUCCEEDED:
                state = RevertState.REVERTED
            elif host.run_state in _FAILED_RUNS:
                state = RevertState.FAILED
            elif (
                host.run_state is None
                and host.acknowledged_at is not None
                and self.now >= host.acknowledged_at + timeout
            ):
                state = RevertState.FAILED  # the agent took it and reported no revert run
            else:
                continue
            changes.append(
                {
                    "agent_id": host.agent_id,
                    "revert_state": state.value,
                    "revert_run_id": host.run_id,
                }
            )
        if changes:
            await rollouts_db.set_hosts(self.session, self.rollout.id, changes)
            self.changed = True

    async def settle(self, counts: dict[tuple[int, str], int]) -> None:
        done = sum(
            n
            for (_, state), n in counts.items()
            if state in (RolloutHostState.SUCCEEDED.value, *(s.value for s in FAILED_HOST_STATES))
        )
        columns: dict[str, Any] = {}
        if done != self.rollout.hosts_done:
            columns["hosts_done"] = done
        still_open = any(n for (_, state), n in counts.items() if state in _OPEN_VALUES)
        if self.rollout.state in TERMINAL_ROLLOUT_STATES and not still_open:
            columns["settled"] = True
        if columns:
            await rollouts_db.update_rollout(self.session, self.rollout.id, **columns)


_OPEN_VALUES = frozenset(state.value for state in OPEN_HOST_STATES)


def _gate_text(rollout: RolloutSummary) -> str:
    parts = []
    if rollout.gates.max_failure_rate is not None:
        parts.append(f"at most {rollout.gates.max_failure_rate:.1%}")
    if rollout.gates.max_failures is not None:
        parts.append(f"at most {rollout.gates.max_failures} failed")
    return " and ".join(parts)


async def tick(
    sessions: async_sessionmaker[AsyncSession],
    config: ServerConfig,
    rollout_id: str,
    now: datetime | None = None,
) -> bool:
    """One tick of one rollout in its own transaction; False when another transaction holds
    it (another replica's scheduler) or it is gone."""
    async with sessions() as session, session.begin():
        rollout = await rollouts_db.lock_rollout(session, rollout_id, skip_locked=True)
        if rollout is None:
            return False
        step = _Tick(session, config, rollout, now or datetime.now(UTC))
        await step.outcomes()
        counts = await step.counts()
        if not await step.gates(counts):
            await step.advance(counts)
        if step.rollout.state == RolloutState.REVERTING:
            await step.revert(counts)
        if step.changed:
            counts = await step.counts()
        await step.settle(counts)
    return True


class RolloutScheduler:
    """The background job: a tick of every unsettled rollout every ``rollout_tick_seconds``
    (and at once after :meth:`wake`). Errors are logged; the next tick tries again."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], config: ServerConfig) -> None:
        self._sessions = sessions
        self._config = config
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._active = False  # the last tick found an unsettled rollout
        self.ticks = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flagpost-rollouts"
            )

    def wake(self) -> None:
        """Tick now (a rollout was created or changed in this process)."""
        self._wake.set()

    def on_ingest_commit(self, batch: CommittedBatch) -> None:
        """An ``IngestWriter`` commit listener: runs changed, so while a rollout is unsettled,
        tick now (a gate breach halts within a tick's time, not a tick interval)."""
        if batch.run_ids and self._active:
            self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self) -> None:
        async with self._sessions() as session:
            ids = await rollouts_db.unsettled_ids(session)
        self._active = bool(ids)
        for rollout_id in ids:
            await tick(self._sessions, self._config, rollout_id)
        self.ticks += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # keep the job alive; the next tick tries again
                log_tick_failure(log, "rollouts", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.rollout_tick_seconds)
            self._wake.clear()
            await asyncio.sleep(MIN_TICK_GAP_SECONDS)  # wake-ups coalesce
