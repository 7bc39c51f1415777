"""Crash recovery: resolve a journal left by an agent that died in the middle of a run.

Before the commit point the run is rolled back from its backup and reported as failed
("interrupted ... rolled back"); at or after it, the outcome stored in the journal is recorded.
Either way the outcome is reported exactly once (see :mod:`agent.migrations.journal`).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from agent import events, runs
from agent.migrations import fsops
from agent.migrations.context import EngineContext
from agent.migrations.execute import record_outcome, rollback
from agent.migrations.journal import VERIFYING, Journal, JournalError, read_journal, write_journal
from agent.runlog import RunLog
from agent.runs import RunTracker
from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)


def recover(context: EngineContext) -> agent_pb2.MigrationEvent | None:
    """Resolve a journal left by a crash (call before anything else at start). Returns the
    outcome event, or None when there was no journal (or an unreadable one, moved aside)."""
    journal_path = context.journal_path
    try:
        journal = read_journal(journal_path)
    except JournalError as exc:
        aside = journal_path.with_name(f"migration-journal.corrupt-{uuid7_str()}.json")
        os.replace(journal_path, aside)
        log.error("%s; moved aside to %s", exc, aside)
        return None
    if journal is None:
        return None
    run_log = RunLog(journal.run_id)
    run_log.attach(context.outbox.runs)  # continues the run's log (persisted seq counter)
    executor = run_log.source("executor")
    event = journal.stored_event()
    if event is not None:
        log.warning("recovering run %s: recording its stored outcome", journal.run_id)
        executor.warning(
            "Agent restarted after a crash; recorded the stored outcome of this run: "
            f"{event.message}",
            phase=journal.phase,
        )
    else:
        event = _interrupted_event(context, journal)
        executor.error(event.error_message, phase=journal.phase, step=journal.current_step)
    update = journal.stored_update()
    if update is None:
        # Journal the decided outcome first: a crash before the journal is cleared then
        # records these same ids again (exactly once), never a second terminal snapshot.
        update = _recovered_update(context, journal, event)
        committed = event.status == events.SUCCESS
        write_journal(journal_path, journal.with_outcome(event, update, committed=committed))
    record_outcome(context, event, update)
    return event


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _recovered_update(
    context: EngineContext, journal: Journal, event: agent_pb2.MigrationEvent
) -> agent_pb2.RunUpdate:
    """The terminal snapshot of a run resolved by :func:`recover` (journal without one)."""
    tracker = RunTracker(
        context.outbox.runs,
        run_id=journal.run_id,
        migration_id=journal.migration_id,
        migration_from=journal.from_version,
        migration_to=journal.to_version,
        steps=journal.steps,
        requested_by=journal.requested_by_action_id,
        started_at=_parse_time(journal.started_at),
        labels=journal.labels(),
    )
    rolled_back = event.error_detail.rollback == "succeeded"
    current = tracker.index(journal.current_step)
    for index in range(len(journal.steps)):
        if event.status == events.SUCCESS:
            status = runs.STEP_SUCCEEDED
        elif current is None:
            # before the first step (nothing applied) or while verifying (all applied)
            applied = journal.phase == VERIFYING
            status = (
                (runs.STEP_ROLLED_BACK if rolled_back else runs.STEP_SUCCEEDED)
                if applied
                else runs.STEP_SKIPPED
            )
        elif index < current:
            status = runs.STEP_ROLLED_BACK if rolled_back else runs.STEP_SUCCEEDED
        elif index == current:
            status = runs.STEP_FAILED
        else:
            status = runs.STEP_SKIPPED
        tracker.set_step(index, status, "interrupted" if status == runs.STEP_FAILED else "")
    if event.status == events.SUCCESS:
        state = runs.SUCCEEDED
    elif event.status == events.PARTIAL:
        state = runs.PARTIAL
    else:
        state = runs.FAILED
    error = "" if state == runs.SUCCEEDED else event.message
    return tracker.final(state, error)


def _interrupted_event(context: EngineContext, journal: Journal) -> agent_pb2.MigrationEvent:
    """The outcome of a run interrupted before its commit point, rolled back from its backup."""
    backup_dir = Path(journal.backup_dir)
    manifest: fsops.Manifest | None
    try:
        manifest = fsops.load_manifest(backup_dir)
    except (OSError, ValueError, KeyError, TypeError):
        manifest = None  # the crash came before the backup was complete: nothing touched
    rolled, rollback_error = rollback(manifest, backup_dir, journal.touched)
    step = journal.current_step or journal.phase
    after = {
        "succeeded": "rolled back",
        "not_started": "nothing had been changed",
    }.get(rolled, f"ROLLBACK FAILED: {rollback_error}")
    full = (
        f"Migration {journal.from_version} -> {journal.to_version} was interrupted "
        f"(agent stopped during {journal.phase}, step {step}, after {journal.ops_done} "
        f"file operations); {after}. Backup: {backup_dir}"
    )
    log.warning("recovering run %s: %s", journal.run_id, full)
    labels = journal.labels()
    return events.migration_event(
        event_type=labels.execution_type,
        labels=labels,
        status=events.PARTIAL if rolled == "failed" else events.FAILED,
        run_id=journal.run_id,
        event_id=journal.execution_event_id,
        message=f"Migration {journal.from_version} -> {journal.to_version} interrupted; {after}",
        error_message=full,
        error=events.ErrorInfo(
            failing_step=step,
            file_path=journal.config_path,
            exception_type="Interrupted",
            rollback=rolled,
            rollback_error=rollback_error,
            backup_path=str(backup_dir),
        ),
        migration_from=journal.from_version,
        migration_to=journal.to_version,
        system_info=context.system_info(Path(journal.config_path)),
    )
