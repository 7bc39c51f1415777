"""The migration engine: detect → plan → back up → apply each step → verify → commit.

Every outcome is an event written to the outbox:

* detection ``failed`` (bad config), ``not_needed`` (current version, or no config at all) or
  ``success`` (a migration is needed, from → to); then, for a needed migration,
* execution ``success``, ``failed`` (rolled back) or ``partial`` (the rollback itself failed,
  the config may be half-migrated; the backup path is in the event).

Safety (DESIGN §5): the plan is computed first, so every file the run may touch is known and
backed up (checksummed, new dir per run) before the first change; each file operation is an
atomic write or a durable removal; the journal (see :mod:`agent.migrations.journal`) records
progress and the pre-generated outcome event ids, so a crash is resolved on the next start by
:meth:`MigrationEngine.recover`, which reports the outcome exactly once.
"""

from __future__ import annotations

import base64
import contextlib
import errno as errno_module
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import events, runlog, runs
from agent.faults import FaultInjector
from agent.migrations import fsops
from agent.migrations.journal import (
    APPLYING,
    BACKED_UP,
    OUTCOME,
    VERIFYING,
    Journal,
    JournalError,
    clear_journal,
    read_journal,
    write_journal,
)
from agent.migrations.model import (
    Detected,
    DetectionError,
    DiskView,
    FileOp,
    FileView,
    Migration,
    PlannedView,
    Step,
    WriteFile,
)
from agent.outbox import Outbox
from agent.runlog import RunLog
from agent.runs import RunCancelled, RunControl, RunTracker
from agent.sysinfo import system_info as default_system_info
from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)

SystemInfo = Callable[[Path], Mapping[str, str]]


class MigrationInterrupted(Exception):
    """A shutdown was requested between two steps; the run is rolled back."""


@dataclass(frozen=True, slots=True)
class PlannedStep:
    step: Step
    ops: tuple[FileOp, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do: the detected state and, per step, its file operations."""

    migration: Migration
    root: Path
    detected: Detected
    steps: tuple[PlannedStep, ...]

    @property
    def needed(self) -> bool:
        return bool(self.steps)

    def touched(self) -> tuple[Path, ...]:
        """Every file the run may touch: the migration's declared files plus every op path."""
        paths = list(self.migration.files(self.root))
        for planned in self.steps:
            paths.extend(op.path for op in planned.ops)
        return tuple(dict.fromkeys(paths))


def make_plan(migration: Migration, view: FileView, run_log: RunLog | None = None) -> Plan:
    """Detect and plan every step on an in-memory overlay; nothing on disk changes.

    ``run_log``: the run's logger; ``detect`` runs with it bound to source "detector" and each
    step's ``plan`` with it bound to the step's name (see :func:`agent.runlog.current`).
    Raises :class:`DetectionError` for a bad config (or a step that cannot read its input)."""
    try:
        with runlog.bound(run_log, "detector"):
            detected = migration.detect(view)
        planned: list[PlannedStep] = []
        if detected.version is not None and detected.version != migration.current_version:
            overlay = PlannedView(view)
            for step in migration.path_from(detected.version):
                with runlog.bound(run_log, step.name):
                    ops = tuple(step.plan(overlay))
                for op in ops:
                    overlay.apply(op)
                planned.append(PlannedStep(step, ops))
    except OSError as exc:
        path = Path(exc.filename) if exc.filename else view.root
        raise DetectionError.from_os_error(path, exc) from exc
    return Plan(migration, view.root, detected, tuple(planned))


@dataclass(frozen=True, slots=True)
class RunResult:
    """The events one attempt recorded (``execution`` None when nothing had to be executed)."""

    run_id: str
    migration_id: str
    detection: agent_pb2.MigrationEvent | None
    execution: agent_pb2.MigrationEvent | None
    detected_version: str
    backup_dir: Path | None = None

    @property
    def failed(self) -> bool:
        failed = (events.FAILED, events.PARTIAL)
        if self.execution is not None:
            return bool(self.execution.status in failed)
        return self.detection is not None and self.detection.status in failed


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _encode(event: agent_pb2.MigrationEvent) -> str:
    return base64.b64encode(event.SerializeToString()).decode("ascii")


def _decode(text: str) -> agent_pb2.MigrationEvent:
    return agent_pb2.MigrationEvent.FromString(base64.b64decode(text))


def _encode_update(update: agent_pb2.RunUpdate) -> str:
    return base64.b64encode(update.SerializeToString()).decode("ascii")


def _decode_update(text: str) -> agent_pb2.RunUpdate:
    return agent_pb2.RunUpdate.FromString(base64.b64decode(text))


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class MigrationEngine:
    """Runs migrations against ``root`` with state (journal, backups) in ``state_dir``."""

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        outbox: Outbox,
        *,
        faults: FaultInjector | None = None,
        system_info: SystemInfo | None = None,
        should_stop: Callable[[], bool] | None = None,
        control: RunControl | None = None,
        step_delay: timedelta = timedelta(0),
    ) -> None:
        self._root = root
        self._state_dir = state_dir
        self._outbox = outbox
        self._faults = faults or FaultInjector()
        self._system_info: SystemInfo = system_info or default_system_info
        self._should_stop = should_stop or (lambda: False)
        self._control = control or RunControl()
        self._step_delay = step_delay.total_seconds()
        self._last_detection: dict[str, str] = {}

    @property
    def journal_path(self) -> Path:
        return self._state_dir / "migration-journal.json"

    @property
    def backups_dir(self) -> Path:
        return self._state_dir / "backups"

    # ------------------------------------------------------------ planning

    def plan(self, migration: Migration) -> Plan:
        """The plan for ``migration`` on the current disk state (dry run)."""
        return make_plan(migration, DiskView(self._root))

    # ------------------------------------------------------------ running

    def run(self, migration: Migration, *, report_unchanged: bool = True) -> RunResult:
        """One attempt: detect, and if needed execute; every outcome goes to the outbox.

        With ``report_unchanged`` False a not_needed or failed detection whose outcome equals the
        previous one of this engine is not recorded again (the daemon's periodic re-detection).
        """
        run_id = uuid7_str()
        config_hint = next(iter(migration.files(self._root)), self._root)
        try:
            plan = make_plan(migration, DiskView(self._root))
        except DetectionError as exc:
            path = exc.path or config_hint
            event = events.migration_event(
                event_type=events.DETECTION,
                status=events.FAILED,
                run_id=run_id,
                message=f"Detection failed: {exc.message}",
                error_message=exc.message,
                error=events.ErrorInfo(
                    file_path=str(path),
                    errno=exc.errno,
                    exception_type=exc.exception_type,
                    line=exc.line,
                ),
                migration_from=exc.version,
                migration_to=migration.current_version,
                system_info=self._system_info(path),
            )
            recorded = self._record_detection(
                migration, f"failed:{exc.message}", event, report_unchanged
            )
            self._outbox.set_state(f"config_version:{migration.id}", "")
            log.warning("%s: detection failed: %s", migration.id, exc.message)
            return RunResult(run_id, migration.id, recorded, None, "")
        detected = plan.detected
        version = detected.version or ""
        self._outbox.set_state(f"config_version:{migration.id}", version)
        info_path = detected.path or config_hint
        if not plan.needed:
            if detected.version is None:
                message = f"{detected.message}; nothing to migrate"
            else:
                message = f"Config is at version {version} (current); no migration needed"
            event = events.migration_event(
                event_type=events.DETECTION,
                status=events.NOT_NEEDED,
                run_id=run_id,
                message=message,
                migration_from=version,
                migration_to=migration.current_version,
                system_info=self._system_info(info_path),
            )
            recorded = self._record_detection(
                migration, f"not_needed:{version}", event, report_unchanged
            )
            log.info("%s: %s", migration.id, message)
            return RunResult(run_id, migration.id, recorded, None, version)
        return self._execute(plan, run_id, info_path)

    def _record_detection(
        self,
        migration: Migration,
        key: str,
        event: agent_pb2.MigrationEvent,
        report_unchanged: bool,
    ) -> agent_pb2.MigrationEvent | None:
        if not report_unchanged and self._last_detection.get(migration.id) == key:
            return None
        self._last_detection[migration.id] = key
        self._outbox.add(event)
        return event

    def _execute(self, plan: Plan, run_id: str, config_path: Path) -> RunResult:
        migration = plan.migration
        source = plan.detected.version or ""
        target = migration.current_version
        info = self._system_info(config_path)
        detection = events.migration_event(
            event_type=events.DETECTION,
            status=events.SUCCESS,
            run_id=run_id,
            message=f"Migration needed: {source} -> {target}",
            migration_from=source,
            migration_to=target,
            system_info=info,
        )
        self._last_detection[migration.id] = f"needed:{source}"
        self._outbox.add(detection)
        backup_dir = self.backups_dir / run_id
        touched = plan.touched()
        journal = Journal(
            run_id=run_id,
            migration_id=migration.id,
            from_version=source,
            to_version=target,
            config_path=str(config_path),
            backup_dir=str(backup_dir),
            detection_event_id=detection.event_id,
            execution_event_id=uuid7_str(),
            started_at=_now(),
            steps=tuple(planned.step.name for planned in plan.steps),
            touched=tuple(str(path) for path in touched),
        )
        write_journal(self.journal_path, journal)
        log.info("%s: migrating %s -> %s (run %s)", migration.id, source, target, run_id)
        self._faults.reached("before_backup")
        manifest: fsops.Manifest | None = None
        failing_step = "backup"
        failing_path: Path | None = None
        try:
            manifest = fsops.create_backup(touched, backup_dir, run_id)
            journal = replace(journal, phase=BACKED_UP)
            write_journal(self.journal_path, journal)
            self._faults.reached("after_backup")
            journal = self._apply_steps(plan, journal)
            failing_step, failing_path = "verify", config_path
            journal = replace(journal, phase=VERIFYING, current_step="verify")
            write_journal(self.journal_path, journal)
            self._verify(migration)
        except Exception as exc:
            cause: BaseException = exc
            if isinstance(exc, _StepFailure):
                failing_step, failing_path, cause = exc.step, exc.path, exc.cause
            event = self._failure_event(journal, cause, failing_step, failing_path, manifest, info)
            self._finish(journal, event, committed=False)
            return RunResult(run_id, migration.id, detection, event, source, backup_dir)
        event = events.migration_event(
            event_type=events.EXECUTION,
            status=events.SUCCESS,
            run_id=run_id,
            event_id=journal.execution_event_id,
            message=f"Config migrated {source} -> {target}",
            migration_from=source,
            migration_to=target,
            error=events.ErrorInfo(backup_path=str(backup_dir)),
            system_info=info,
        )
        self._finish(journal, event, committed=True)
        self._outbox.set_state(f"config_version:{migration.id}", target)
        log.info("%s: config migrated %s -> %s", migration.id, source, target)
        return RunResult(run_id, migration.id, detection, event, source, backup_dir)

    def _apply_steps(self, plan: Plan, journal: Journal) -> Journal:
        done = 0
        for planned in plan.steps:
            if self._should_stop():
                raise _StepFailure(
                    planned.step.name, None, MigrationInterrupted("shutdown requested")
                )
            journal = replace(journal, phase=APPLYING, current_step=planned.step.name)
            write_journal(self.journal_path, journal)
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
                write_journal(self.journal_path, journal)
                log.debug("%s: %s", planned.step.name, op.describe())
                self._faults.reached(f"after_write:{done}")
        return journal

    def _verify(self, migration: Migration) -> None:
        view = DiskView(self._root)
        detected = migration.detect(view)
        if detected.version != migration.current_version:
            raise DetectionError(
                f"verify: expected version {migration.current_version}, found {detected.version}",
                path=detected.path,
                exception_type="VerificationError",
            )
        if migration.verify is not None:
            migration.verify(view)

    def _rollback(
        self, manifest: fsops.Manifest | None, backup_dir: Path, touched: tuple[str, ...]
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
        rollback, rollback_error = self._rollback(manifest, backup_dir, journal.touched)
        code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        if isinstance(exc, DetectionError):
            code = exc.errno
            path = path or exc.path
        if path is None and isinstance(exc, OSError) and exc.filename:
            path = Path(str(exc.filename))
        name = errno_module.errorcode.get(code, "") if code else ""
        kind = exc.exception_type if isinstance(exc, DetectionError) else type(exc).__name__
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" on {path}" if path else ""
        code_text = f" [{name}]" if name else ""
        if rollback == "succeeded":
            after = "rolled back"
        elif rollback == "not_started":
            after = "nothing was changed"
        else:
            after = f"ROLLBACK FAILED: {rollback_error}"
        status = events.PARTIAL if rollback == "failed" else events.FAILED
        full = (
            f"Migration {journal.from_version} -> {journal.to_version} failed at step "
            f"{step}{where}: {kind}{code_text}: {reason}; {after}. "
            f"Backup: {backup_dir}"
        )
        log.error("%s: %s", journal.migration_id, full)
        return events.migration_event(
            event_type=events.EXECUTION,
            status=status,
            run_id=journal.run_id,
            event_id=journal.execution_event_id,
            message=f"Migration {journal.from_version} -> {journal.to_version} failed at "
            f"{step}: {kind}{code_text}; {after}",
            error_message=full,
            error=events.ErrorInfo(
                failing_step=step,
                file_path=str(path) if path else "",
                errno=code,
                exception_type=kind,
                line=exc.line if isinstance(exc, DetectionError) else 0,
                rollback=rollback,
                rollback_error=rollback_error,
                backup_path=str(backup_dir),
            ),
            migration_from=journal.from_version,
            migration_to=journal.to_version,
            system_info=info,
        )

    def _finish(self, journal: Journal, event: agent_pb2.MigrationEvent, committed: bool) -> None:
        """Store the outcome in the journal (the commit point when ``committed``), then in the
        outbox, then delete the journal: a crash anywhere here reports it exactly once."""
        journal = replace(journal, phase=OUTCOME, committed=committed, outcome_event=_encode(event))
        write_journal(self.journal_path, journal)
        self._faults.reached("after_commit")
        self._outbox.add(event)
        self._faults.reached("before_journal_clear")
        clear_journal(self.journal_path)

    # ------------------------------------------------------------ crash recovery

    def recover(self) -> agent_pb2.MigrationEvent | None:
        """Resolve a journal left by a crash (call before anything else at start).

        Before the commit point the run is rolled back from its backup and reported as failed
        ("interrupted ... rolled back"); at or after it, the stored outcome is recorded. Returns
        the outcome event, or None when there was no journal."""
        try:
            journal = read_journal(self.journal_path)
        except JournalError as exc:
            aside = self.journal_path.with_name(f"migration-journal.corrupt-{uuid7_str()}.json")
            os.replace(self.journal_path, aside)
            log.error("%s; moved aside to %s", exc, aside)
            return None
        if journal is None:
            return None
        if journal.outcome_event:
            event = _decode(journal.outcome_event)
            log.warning("recovering run %s: recording its stored outcome", journal.run_id)
        else:
            event = self._interrupted_event(journal)
        self._outbox.add(event)
        self._faults.reached("before_journal_clear")
        clear_journal(self.journal_path)
        return event

    def _interrupted_event(self, journal: Journal) -> agent_pb2.MigrationEvent:
        backup_dir = Path(journal.backup_dir)
        manifest: fsops.Manifest | None
        try:
            manifest = fsops.load_manifest(backup_dir)
        except (OSError, ValueError, KeyError, TypeError):
            manifest = None  # the crash came before the backup was complete: nothing touched
        rollback, rollback_error = self._rollback(manifest, backup_dir, journal.touched)
        step = journal.current_step or journal.phase
        after = {
            "succeeded": "rolled back",
            "not_started": "nothing had been changed",
        }.get(rollback, f"ROLLBACK FAILED: {rollback_error}")
        full = (
            f"Migration {journal.from_version} -> {journal.to_version} was interrupted "
            f"(agent stopped during {journal.phase}, step {step}, after {journal.ops_done} "
            f"file operations); {after}. Backup: {backup_dir}"
        )
        log.warning("recovering run %s: %s", journal.run_id, full)
        return events.migration_event(
            event_type=events.EXECUTION,
            status=events.PARTIAL if rollback == "failed" else events.FAILED,
            run_id=journal.run_id,
            event_id=journal.execution_event_id,
            message=f"Migration {journal.from_version} -> {journal.to_version} interrupted; "
            f"{after}",
            error_message=full,
            error=events.ErrorInfo(
                failing_step=step,
                file_path=journal.config_path,
                exception_type="Interrupted",
                rollback=rollback,
                rollback_error=rollback_error,
                backup_path=str(backup_dir),
            ),
            migration_from=journal.from_version,
            migration_to=journal.to_version,
            system_info=self._system_info(Path(journal.config_path)),
        )


class _StepFailure(Exception):
    """Carries the failing step and file out of the apply loop."""

    def __init__(self, step: str, path: Path | None, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.step = step
        self.path = path
        self.cause = cause
