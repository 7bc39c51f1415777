"""Executing a plan: back up every file it touches, apply each step's file operations, verify
the result, and on any failure roll everything back from the backup.

Each file operation is an atomic write or a durable removal; the journal (see
:mod:`agent.migrations.journal`) records the progress and the pre-generated outcome event id
before and after each, so a crash at any point is resolved by
:func:`agent.migrations.recovery.recover` on the next start.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from agent import events, runlog, runs
from agent.errors import AgentError, error_info
from agent.migrations import fsops
from agent.migrations.context import EngineContext
from agent.migrations.journal import (
    APPLYING,
    BACKED_UP,
    VERIFYING,
    Journal,
    clear_journal,
    write_journal,
)
from agent.migrations.model import DetectionError, DiskView, Migration, WriteFile
from agent.migrations.plan import Plan
from agent.migrations.result import RunResult
from agent.runlog import RunLog
from agent.runs import RunCancelled, RunTracker
from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)


class MigrationInterrupted(AgentError):
    """A shutdown was requested between two steps; the run is rolled back."""


class _StepFailure(AgentError):
    """Carries the failing step and file out of the apply loop."""

    def __init__(self, step: str, path: Path | None, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.step = step
        self.path = path
        self.cause = cause


def rollback(
    manifest: fsops.Manifest | None, backup_dir: Path, touched: tuple[str, ...]
) -> tuple[str, str]:
    """Restore from the backup; returns (rollback outcome, rollback error)."""
    if manifest is None:
        # The backup never completed, so no config file was touched yet.
        with contextlib.suppress(OSError):
            fsops.remove_temp_files(Path(path) for path in touched)
        return "not_started", ""
    try:
        fsops.restore_backup(manifest, backup_dir)
    except (fsops.RollbackError, OSError) as exc:
        log.error("rollback failed: %s", exc)
        return "failed", str(exc)
    return "succeeded", ""


def record_outcome(
    context: EngineContext,
    event: agent_pb2.MigrationEvent,
    update: agent_pb2.RunUpdate,
) -> None:
    """Put a run's outcome, already stored in the journal, into the outbox, then delete the
    journal: a crash in between records the same ids again (the outbox ignores an id it
    already holds), so each is reported exactly once."""
    context.outbox.add(event)
    context.outbox.runs.add_update(update)
    context.faults.reached("before_journal_clear")
    clear_journal(context.journal_path)


class Executor:
    """Executes plans whose inputs are all known, one run at a time."""

    def __init__(self, context: EngineContext, step_delay: float) -> None:
        """``step_delay``: seconds to pause before each step (tests and demos; 0 in use)."""
        self._context = context
        self._step_delay = step_delay

    def execute(
        self,
        plan: Plan,
        tracker: RunTracker,
        run_log: RunLog,
        config_path: Path,
        detection: agent_pb2.MigrationEvent | None,
        detection_event_id: str,
        info: Mapping[str, str],
    ) -> RunResult:
        """Back up, apply, verify and commit ``plan`` (or roll it back), reporting the outcome
        (``info``: the system info of its events)."""
        context = self._context
        migration = plan.migration
        run_id = tracker.run_id
        source = plan.detected.version or ""
        target = migration.current_version
        executor = run_log.source("executor")
        backup_dir = context.backups_dir / run_id
        touched = plan.touched()
        journal = Journal(
            run_id=run_id,
            migration_id=migration.id,
            from_version=source,
            to_version=target,
            config_path=str(config_path),
            backup_dir=str(backup_dir),
            detection_event_id=detection_event_id,
            execution_event_id=uuid7_str(),
            started_at=tracker.started_at.isoformat(),
            steps=tuple(planned.step.name for planned in plan.steps),
            touched=tuple(str(path) for path in touched),
            requested_by_action_id=tracker.requested_by,
            spec_id=tracker.labels.spec_id,
            spec_revision=tracker.labels.spec_revision,
            reverts_run_id=tracker.labels.reverts_run_id,
        )
        write_journal(context.journal_path, journal)
        tracker.start()
        log.info("%s: migrating %s -> %s (run %s)", migration.id, source, target, run_id)
        context.faults.reached("before_backup")
        manifest: fsops.Manifest | None = None
        failing_step = "backup"
        failing_path: Path | None = None
        try:
            manifest = fsops.create_backup(touched, backup_dir, run_id)
            journal = replace(journal, phase=BACKED_UP)
            write_journal(context.journal_path, journal)
            executor.info(
                f"Backed up {len(manifest.entries)} files to {backup_dir} (checksums verified)",
                backup_dir=str(backup_dir),
                files=len(manifest.entries),
            )
            context.faults.reached("after_backup")
            journal = self._apply_steps(plan, journal, tracker, run_log)
            failing_step, failing_path = "verify", config_path
            self._boundary("verify")
            journal = replace(journal, phase=VERIFYING, current_step="verify")
            write_journal(context.journal_path, journal)
            with runlog.bound(run_log, "executor"):
                self._verify(migration)
            executor.info(f"Verified: the config is a valid version {target}")
            # What the run leaves, checksummed, for a later revert (agent/specs/revert.py).
            fsops.record_after(
                backup_dir,
                touched,
                run_id=run_id,
                migration_id=migration.id,
                from_version=source,
                to_version=target,
            )
        except Exception as exc:
            cause: BaseException = exc
            if isinstance(exc, _StepFailure):
                failing_step, failing_path, cause = exc.step, exc.path, exc.cause
            event = self._failure_event(journal, cause, failing_step, failing_path, manifest, info)
            rolled = event.error_detail.rollback
            if rolled == "failed":
                state = runs.PARTIAL
            elif isinstance(cause, RunCancelled):
                state = runs.CANCELLED
            else:
                state = runs.FAILED
            (executor.warning if state == runs.CANCELLED else executor.error)(
                event.error_message,
                step=failing_step,
                rollback=rolled,
                errno=event.error_detail.errno_name,
            )
            tracker.conclude_steps(
                f"{type(cause).__name__}: {cause}", rolled_back=rolled == "succeeded"
            )
            update = tracker.final(state, event.message)
            self._finish(journal, event, update, committed=False)
            return RunResult(run_id, migration.id, detection, event, source, backup_dir)
        event = events.migration_event(
            event_type=tracker.labels.execution_type,
            labels=tracker.labels,
            status=events.SUCCESS,
            run_id=run_id,
            event_id=journal.execution_event_id,
            message=f"Config migrated {source} -> {target}",
            migration_from=source,
            migration_to=target,
            error=events.ErrorInfo(backup_path=str(backup_dir)),
            system_info=info,
        )
        executor.info(f"Config migrated {source} -> {target}", backup_dir=str(backup_dir))
        update = tracker.final(runs.SUCCEEDED, "")
        self._finish(journal, event, update, committed=True)
        context.outbox.set_state(f"config_version:{migration.id}", target)
        log.info("%s: config migrated %s -> %s", migration.id, source, target)
        return RunResult(run_id, migration.id, detection, event, source, backup_dir)

    def _boundary(self, step: str) -> None:
        """A step boundary: the test/demo step delay, then stop here if cancelled or shutting
        down (raises :class:`_StepFailure` carrying the step that was about to start)."""
        control = self._context.control
        if self._step_delay > 0:
            control.pause(self._step_delay)
        if self._context.should_stop():
            raise _StepFailure(step, None, MigrationInterrupted("shutdown requested"))
        try:
            control.checkpoint()
        except RunCancelled as exc:
            raise _StepFailure(step, None, exc) from exc

    def _apply_steps(
        self, plan: Plan, journal: Journal, tracker: RunTracker, run_log: RunLog
    ) -> Journal:
        journal_path = self._context.journal_path
        done = 0
        for index, planned in enumerate(plan.steps):
            self._boundary(planned.step.name)
            journal = replace(journal, phase=APPLYING, current_step=planned.step.name)
            write_journal(journal_path, journal)
            tracker.step_started(index)
            step_log = run_log.source(planned.step.name)
            step_log.info(
                f"Step {index + 1}/{len(plan.steps)} started: {planned.step.description}",
                from_version=planned.step.from_version,
                to_version=planned.step.to_version,
            )
            for op in planned.ops:
                try:
                    if isinstance(op, WriteFile):
                        existed = op.path.exists()
                        fsops.ensure_dir(op.path.parent)
                        fsops.atomic_write(op.path, op.data, op.mode)
                        if existed:
                            journal = replace(
                                journal, files_modified=(*journal.files_modified, str(op.path))
                            )
                        else:
                            journal = replace(
                                journal, files_created=(*journal.files_created, str(op.path))
                            )
                    else:
                        fsops.remove_file(op.path)
                        journal = replace(
                            journal, files_removed=(*journal.files_removed, str(op.path))
                        )
                except Exception as exc:
                    raise _StepFailure(planned.step.name, op.path, exc) from exc
                done += 1
                journal = replace(journal, ops_done=done)
                write_journal(journal_path, journal)
                step_log.info(op.describe(), path=str(op.path))
                self._context.faults.reached(f"after_write:{done}")
            tracker.step_finished(index, runs.STEP_SUCCEEDED)
            step_log.info(f"Step {index + 1}/{len(plan.steps)} done")
        return journal

    def _verify(self, migration: Migration) -> None:
        view = DiskView(self._context.root)
        detected = migration.detect(view)
        if detected.version != migration.current_version:
            raise DetectionError(
                f"verify: expected version {migration.current_version}, found {detected.version}",
                path=detected.path,
                exception_type="VerificationError",
            )
        if migration.verify is not None:
            migration.verify(view)

    def _failure_event(
        self,
        journal: Journal,
        exc: BaseException,
        step: str,
        path: Path | None,
        manifest: fsops.Manifest | None,
        info: Mapping[str, str],
    ) -> agent_pb2.MigrationEvent:
        backup_dir = Path(journal.backup_dir)
        rolled, rollback_error = rollback(manifest, backup_dir, journal.touched)
        detail = error_info(exc)
        if path is not None:
            detail = replace(detail, file_path=str(path))
        kind = detail.exception_type
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" on {detail.file_path}" if detail.file_path else ""
        code_text = f" [{detail.errno_name}]" if detail.errno_name else ""
        if rolled == "succeeded":
            after = "rolled back"
        elif rolled == "not_started":
            after = "nothing was changed"
        else:
            after = f"ROLLBACK FAILED: {rollback_error}"
        status = events.PARTIAL if rolled == "failed" else events.FAILED
        versions = f"{journal.from_version} -> {journal.to_version}"
        if isinstance(exc, RunCancelled):
            full = f"Migration {versions} cancelled before step {step} ({reason}); {after}. "
            short = f"Migration {versions} cancelled before {step}; {after}"
        else:
            full = f"Migration {versions} failed at step {step}{where}: {kind}{code_text}: "
            short = f"Migration {versions} failed at {step}: {kind}{code_text}; {after}"
            full += f"{reason}; {after}. "
        full += f"Backup: {backup_dir}"
        log.error("%s: %s", journal.migration_id, full)
        labels = journal.labels()
        return events.migration_event(
            event_type=labels.execution_type,
            labels=labels,
            status=status,
            run_id=journal.run_id,
            event_id=journal.execution_event_id,
            message=short,
            error_message=full,
            error=replace(
                detail,
                failing_step=step,
                rollback=rolled,
                rollback_error=rollback_error,
                backup_path=str(backup_dir),
            ),
            migration_from=journal.from_version,
            migration_to=journal.to_version,
            system_info=info,
        )

    def _finish(
        self,
        journal: Journal,
        event: agent_pb2.MigrationEvent,
        update: agent_pb2.RunUpdate,
        committed: bool,
    ) -> None:
        """Store the outcome (event and terminal run snapshot) in the journal (the commit point
        when ``committed``), then record it (see :func:`record_outcome`)."""
        write_journal(
            self._context.journal_path, journal.with_outcome(event, update, committed=committed)
        )
        self._context.faults.reached("after_commit")
        record_outcome(self._context, event, update)
