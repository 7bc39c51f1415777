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
import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import events, runlog, runs
from agent.errors import AgentError
from agent.faults import FaultInjector
from agent.inputs import ANSWERED, CANCELLED, STOPPED, InputBroker
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
    MAX_INPUT_ERROR_CHARS,
    MAX_INPUT_FIELDS,
    Detected,
    DetectionError,
    DiskView,
    FileOp,
    FileView,
    Inputs,
    InputSpec,
    Migration,
    PlannedView,
    Step,
    WriteFile,
)
from agent.migrations.waiting import WaitingRun, WaitingRuns
from agent.outbox import Outbox
from agent.runlog import RunLog
from agent.runs import RunCancelled, RunControl, RunTracker
from agent.sysinfo import system_info as default_system_info
from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)

SystemInfo = Callable[[Path], Mapping[str, str]]


class MigrationInterrupted(AgentError):
    """A shutdown was requested between two steps; the run is rolled back."""


@dataclass(frozen=True, slots=True)
class PlannedStep:
    step: Step
    ops: tuple[FileOp, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do: the detected state and, per step, its file operations.

    ``inputs``: every input the steps need (in step order, each name once); ``input_errors``:
    per name, why a given value is wrong. While :attr:`missing` is not empty the ops of the
    steps that need those inputs were planned with placeholders and must not be executed."""

    migration: Migration
    root: Path
    detected: Detected
    steps: tuple[PlannedStep, ...]
    inputs: tuple[InputSpec, ...] = ()
    input_errors: Mapping[str, str] = field(default_factory=dict)
    provided: frozenset[str] = frozenset()

    @property
    def needed(self) -> bool:
        return bool(self.steps)

    @property
    def missing(self) -> tuple[InputSpec, ...]:
        """The inputs without a right value: not given, or given and wrong."""
        return tuple(
            spec
            for spec in self.inputs
            if spec.name not in self.provided or spec.name in self.input_errors
        )

    def touched(self) -> tuple[Path, ...]:
        """Every file the run may touch: the migration's declared files plus every op path."""
        paths = list(self.migration.files(self.root))
        for planned in self.steps:
            paths.extend(op.path for op in planned.ops)
        return tuple(dict.fromkeys(paths))


def make_plan(
    migration: Migration,
    view: FileView,
    run_log: RunLog | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Plan:
    """Detect and plan every step on an in-memory overlay; nothing on disk changes.

    ``run_log``: the run's logger; ``detect`` runs with it bound to source "detector" and each
    step's ``plan`` with it bound to the step's name (see :func:`agent.runlog.current`).
    ``inputs``: values for the inputs steps declare (see :class:`~.model.InputNeeds`); each given
    value is checked by its step, a missing or wrong one is planned with a placeholder (see
    :attr:`Plan.missing`). Raises :class:`DetectionError` for a bad config (or a step that cannot
    read its input)."""
    given = Inputs(inputs)
    specs: dict[str, InputSpec] = {}
    errors: dict[str, str] = {}
    try:
        with runlog.bound(run_log, "detector"):
            detected = migration.detect(view)
        planned: list[PlannedStep] = []
        if detected.version is not None and detected.version != migration.current_version:
            overlay = PlannedView(view)
            for step in migration.path_from(detected.version):
                with runlog.bound(run_log, step.name):
                    ops = _plan_step(step, overlay, given, specs, errors)
                for op in ops:
                    overlay.apply(op)
                planned.append(PlannedStep(step, ops))
    except OSError as exc:
        path = Path(exc.filename) if exc.filename else view.root
        raise DetectionError.from_os_error(path, exc) from exc
    if len(specs) > MAX_INPUT_FIELDS:
        raise DetectionError(
            f"{migration.id}: the steps need {len(specs)} inputs, at most {MAX_INPUT_FIELDS} "
            "can be asked for at once",
            exception_type="TooManyInputs",
        )
    provided = frozenset(name for name in specs if name in given)
    return Plan(
        migration, view.root, detected, tuple(planned), tuple(specs.values()), errors, provided
    )


def _plan_step(
    step: Step,
    view: FileView,
    given: Inputs,
    specs: dict[str, InputSpec],
    errors: dict[str, str],
) -> tuple[FileOp, ...]:
    """The ops of one step; a step that needs inputs adds its specs and checks the given values
    (a name declared by two steps is asked once and checked by each)."""
    declared = tuple(step.needs.declare(view)) if step.needs is not None else ()
    if step.needs is None or not declared:
        return tuple(step.plan(view))
    names = [spec.name for spec in declared]
    for spec in declared:
        specs.setdefault(spec.name, spec)
    present = given.only(names)
    if present:
        try:
            found = step.needs.check(view, present)
        except DetectionError:
            raise
        except Exception as exc:
            # Never chain or repeat the exception: its message could hold a value.
            raise DetectionError(
                f"{step.name}: checking the inputs failed ({type(exc).__name__})",
                exception_type="InputCheckError",
            ) from None
        for name, message in found.items():
            if name in present and name not in errors:
                errors[name] = (str(message) or "wrong value")[:MAX_INPUT_ERROR_CHARS]
    values = {
        name: present[name] if name in present and name not in errors else f"<{name}>"
        for name in names
    }
    return tuple(step.needs.plan(view, Inputs(values)))


@dataclass(frozen=True, slots=True)
class RunResult:
    """The events one attempt recorded (``execution`` None when nothing had to be executed)."""

    run_id: str
    migration_id: str
    detection: agent_pb2.MigrationEvent | None
    execution: agent_pb2.MigrationEvent | None
    detected_version: str
    backup_dir: Path | None = None
    waiting: bool = False  # the run waits for input (the agent stopped, or did not wait)

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


def _fingerprint(plan: Plan) -> str:
    """A digest of every file the plan touches (content, mode, owner) and of their directories
    (mode, owner): equal fingerprints mean a retry would meet exactly the same conditions."""
    digest = hashlib.sha256()
    for path in plan.touched():
        for target in (path, path.parent):
            try:
                info = os.stat(target)
            except OSError as exc:
                digest.update(f"{target}:missing:{exc.errno}\n".encode())
                continue
            digest.update(f"{target}:{info.st_mode}:{info.st_uid}:{info.st_gid}\n".encode())
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            digest.update(b"-")
    return digest.hexdigest()


def duration_text(span: timedelta) -> str:
    """``24 h``, ``90 min``, ``1.5 s``: a timeout as a person reads it."""
    seconds = span.total_seconds()
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


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
        inputs: InputBroker | None = None,
        input_timeout: timedelta = timedelta(days=1),
    ) -> None:
        """``inputs``: where a run that needs inputs waits for the answers (None: such a run
        reports AWAITING_INPUT and returns, still waiting); ``input_timeout``: how long a run may
        wait in total (across agent restarts) before it fails."""
        self._root = root
        self._state_dir = state_dir
        self._outbox = outbox
        self._faults = faults or FaultInjector()
        self._system_info: SystemInfo = system_info or functools.partial(
            default_system_info, root=root
        )
        self._should_stop = should_stop or (lambda: False)
        self._control = control or RunControl()
        self._step_delay = step_delay.total_seconds()
        self._inputs = inputs
        self._input_timeout = input_timeout
        self._waiting = WaitingRuns(state_dir)
        self._asked: set[str] = set()  # runs this engine (this process) recorded as waiting
        self._last_detection: dict[str, str] = {}
        # Per migration: fingerprint of the files (and their directories) a failed execution
        # left behind; the periodic re-detection does not execute again from the same state.
        self._failed_state: dict[str, str] = {}

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

    def run(
        self,
        migration: Migration,
        *,
        report_unchanged: bool = True,
        requested_by: str = "",
        wait_for_input: bool = True,
    ) -> RunResult:
        """One attempt: detect, and if needed execute; every outcome goes to the outbox.

        With ``report_unchanged`` False a not_needed or failed detection whose outcome equals the
        previous one of this engine is not recorded again (the daemon's periodic re-detection).
        ``requested_by``: the id of the server action that asked for this attempt; such an
        attempt is always recorded and always a run (see :mod:`agent.runs`).

        A run that was waiting for input when the agent stopped is resumed (same run id; see
        :mod:`agent.migrations.waiting`). With ``wait_for_input`` False (or no input broker) a
        run that needs inputs reports AWAITING_INPUT and returns (``RunResult.waiting``), unless
        its input deadline has passed (it then fails, like a wait that timed out).
        """
        result = self._attempt(migration, report_unchanged, requested_by, wait_for_input)
        if not result.waiting:
            # Whatever ended it (executed, failed, cancelled, nothing needed any more), a
            # finished run is never resumed: forget its record and its open ask.
            self._waiting.clear(migration.id, result.run_id)
            if self._inputs is not None:
                self._inputs.close(result.run_id)
        return result

    def waiting_run_id(self, migration_id: str) -> str | None:
        """The id of the run of ``migration_id`` recorded as waiting for input, None if none."""
        record = self._waiting.get(migration_id)
        return record.run_id if record is not None else None

    def cancel_waiting(self, run_id: str, reason: str) -> str | None:
        """Mark the run ``run_id``, recorded as waiting for input but not in progress,
        cancelled: it ends CANCELLED (nothing changed) when it is resumed next. Returns its
        migration id, None if no such run is recorded."""
        record = self._waiting.cancel(run_id, reason)
        return record.migration_id if record is not None else None

    def reopen_waiting(self, migration_ids: Collection[str]) -> int:
        """Open the asks recorded for waiting runs of ``migration_ids`` in the input broker
        (the daemon calls this before its first check-in): answers an admin sent while the
        agent was down may arrive before the resumed run asks again, and are kept for it.
        Returns how many asks were opened."""
        if self._inputs is None:
            return 0
        opened = 0
        for record in self._waiting.all():
            wanted = record.migration_id in migration_ids and not record.cancelled
            if wanted and record.request_id and record.fields:
                self._inputs.open(record.run_id, record.request_id, record.fields)
                opened += 1
        return opened

    def _cancel_mark(self, migration_id: str, run_id: str) -> str:
        """Why the recorded run ``run_id`` was cancelled while not in progress ("" if not)."""
        record = self._waiting.get(migration_id)
        return record.cancelled if record is not None and record.run_id == run_id else ""

    def _attempt(
        self,
        migration: Migration,
        report_unchanged: bool,
        requested_by: str,
        wait_for_input: bool,
    ) -> RunResult:
        resumed = self._waiting.get(migration.id)
        run_id = resumed.run_id if resumed is not None else uuid7_str()
        started_at = resumed.started_at_time if resumed is not None else datetime.now(UTC)
        if resumed is not None and resumed.requested_by:
            requested_by = resumed.requested_by
        run_log = RunLog(run_id)
        detector = run_log.source("detector")
        detector.info(
            f"Detecting the version of {migration.id}"
            + (f" (requested by action {requested_by})" if requested_by else ""),
            migration_id=migration.id,
        )
        if resumed is not None and resumed.run_id in self._asked:
            detector.info("Resuming this run, which waits for input")
        elif resumed is not None:
            # Normal for `once` and `migrate` (each is a new process); after a daemon restart
            # worth a warning.
            (detector.warning if wait_for_input else detector.info)(
                "Resumed this run, left waiting for input by an earlier agent process (an agent "
                "restart, or an earlier once or migrate); the inputs are asked for again, with "
                "the same request id if the same fields are needed (answers already sent for it "
                "still count)",
                waiting_since=resumed.waiting_since,
            )
        report = report_unchanged or bool(requested_by) or resumed is not None
        config_hint = next(iter(migration.files(self._root)), self._root)
        try:
            plan = make_plan(migration, DiskView(self._root), run_log)
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
            recorded = self._record_detection(migration, f"failed:{exc.message}", event, report)
            self._outbox.set_state(f"config_version:{migration.id}", "")
            detector.error(
                f"Detection failed: {exc.message}",
                file=str(path),
                line=exc.line,
                exception_type=exc.exception_type,
            )
            if recorded is not None:
                self._detection_run(
                    run_log,
                    migration,
                    exc.version,
                    requested_by,
                    started_at,
                    exc.message,
                    resumed=resumed is not None,
                )
            else:
                run_log.discard()
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
            recorded = self._record_detection(migration, f"not_needed:{version}", event, report)
            detector.info(message, version=version or "none")
            if resumed is not None:
                # The config changed while the run waited (someone migrated it by hand?).
                error = f"The config changed while the run waited for input: {message}"
                self._detection_run(
                    run_log, migration, version, requested_by, started_at, error, resumed=True
                )
            elif requested_by:
                self._detection_run(run_log, migration, version, requested_by, started_at, "")
            else:
                run_log.discard()
            return RunResult(run_id, migration.id, recorded, None, version)
        if not report and self._failed_state.get(migration.id) == _fingerprint(plan):
            # Failed before from exactly this state: retrying every interval would only add a
            # backup and a failed run each time (RedFlag's restart loop). Retried when the files
            # or their directories change, at the next start, or when the server asks.
            run_log.discard()
            log.debug("%s: unchanged since the failed attempt; not retrying", migration.id)
            return RunResult(run_id, migration.id, None, None, version)
        detector.info(
            f"Migration needed: {version} -> {migration.current_version} "
            f"({len(plan.steps)} steps: {', '.join(p.step.name for p in plan.steps)})",
            version=version,
            path=str(detected.path),
        )
        tracker = RunTracker(
            self._outbox.runs,
            run_id=run_id,
            migration_id=migration.id,
            migration_from=version,
            migration_to=migration.current_version,
            steps=[planned.step.name for planned in plan.steps],
            requested_by=requested_by,
            started_at=started_at,
        )
        run_log.attach(self._outbox.runs)
        self._control.begin(run_id)
        try:
            result = self._execute(
                plan, run_id, info_path, tracker, run_log, resumed, wait_for_input
            )
        finally:
            self._control.end(run_id)
        if result.failed:
            self._failed_state[migration.id] = _fingerprint(plan)
        else:
            self._failed_state.pop(migration.id, None)
        return result

    def _detection_run(
        self,
        run_log: RunLog,
        migration: Migration,
        version: str,
        requested_by: str,
        started_at: datetime,
        error: str,
        *,
        resumed: bool = False,
    ) -> None:
        """A run without steps: detection failed (``error``) or nothing was needed. A resumed
        run that was cancelled while not in progress ends CANCELLED instead."""
        tracker = RunTracker(
            self._outbox.runs,
            run_id=run_log.run_id,
            migration_id=migration.id,
            migration_from=version,
            migration_to=migration.current_version,
            requested_by=requested_by,
            started_at=started_at,
        )
        run_log.attach(self._outbox.runs)
        self._control.begin(run_log.run_id)
        try:
            tracker.start()
            cancelled = self._cancel_mark(migration.id, run_log.run_id) if resumed else ""
            if cancelled:
                message = f"Run cancelled while waiting for input ({cancelled}); nothing changed"
                run_log.source("executor").warning(message)
                tracker.finish(runs.CANCELLED, message)
            else:
                tracker.finish(runs.FAILED if error else runs.SUCCEEDED, error)
        finally:
            self._control.end(run_log.run_id)

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

    def _execute(
        self,
        plan: Plan,
        run_id: str,
        config_path: Path,
        tracker: RunTracker,
        run_log: RunLog,
        resumed: WaitingRun | None = None,
        wait_for_input: bool = True,
    ) -> RunResult:
        migration = plan.migration
        source = plan.detected.version or ""
        target = migration.current_version
        executor = run_log.source("executor")
        info = self._system_info(config_path)
        self._last_detection[migration.id] = f"needed:{source}"
        detection: agent_pb2.MigrationEvent | None = None
        if resumed is None:
            detection = events.migration_event(
                event_type=events.DETECTION,
                status=events.SUCCESS,
                run_id=run_id,
                message=f"Migration needed: {source} -> {target}",
                migration_from=source,
                migration_to=target,
                system_info=info,
            )
            self._outbox.add(detection)
            detection_event_id = detection.event_id
        else:
            detection_event_id = resumed.detection_event_id  # reported before the restart
            # Cancelled while it was not in progress (read after RunControl.begin: a cancel
            # arriving from now on reaches the run through the RunControl).
            cancelled = self._cancel_mark(migration.id, run_id)
            if cancelled:
                return self._end_unanswered(
                    plan, tracker, run_log, detection, "RunCancelled", cancelled
                )
        if plan.inputs:
            gathered = self._gather_inputs(
                plan, tracker, run_log, detection, detection_event_id, resumed, wait_for_input
            )
            if isinstance(gathered, RunResult):
                return gathered
            plan = gathered
        backup_dir = self.backups_dir / run_id
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
        )
        write_journal(self.journal_path, journal)
        tracker.start()
        log.info("%s: migrating %s -> %s (run %s)", migration.id, source, target, run_id)
        self._faults.reached("before_backup")
        manifest: fsops.Manifest | None = None
        failing_step = "backup"
        failing_path: Path | None = None
        try:
            manifest = fsops.create_backup(touched, backup_dir, run_id)
            journal = replace(journal, phase=BACKED_UP)
            write_journal(self.journal_path, journal)
            executor.info(
                f"Backed up {len(manifest.entries)} files to {backup_dir} (checksums verified)",
                backup_dir=str(backup_dir),
                files=len(manifest.entries),
            )
            self._faults.reached("after_backup")
            journal = self._apply_steps(plan, journal, tracker, run_log)
            failing_step, failing_path = "verify", config_path
            self._boundary("verify")
            journal = replace(journal, phase=VERIFYING, current_step="verify")
            write_journal(self.journal_path, journal)
            with runlog.bound(run_log, "executor"):
                self._verify(migration)
            executor.info(f"Verified: the config is a valid version {target}")
        except Exception as exc:
            cause: BaseException = exc
            if isinstance(exc, _StepFailure):
                failing_step, failing_path, cause = exc.step, exc.path, exc.cause
            event = self._failure_event(journal, cause, failing_step, failing_path, manifest, info)
            rollback = event.error_detail.rollback
            if rollback == "failed":
                state = runs.PARTIAL
            elif isinstance(cause, RunCancelled):
                state = runs.CANCELLED
            else:
                state = runs.FAILED
            (executor.warning if state == runs.CANCELLED else executor.error)(
                event.error_message,
                step=failing_step,
                rollback=rollback,
                errno=event.error_detail.errno_name,
            )
            tracker.conclude_steps(
                f"{type(cause).__name__}: {cause}", rolled_back=rollback == "succeeded"
            )
            update = tracker.final(state, event.message)
            self._finish(journal, event, update, committed=False)
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
        executor.info(f"Config migrated {source} -> {target}", backup_dir=str(backup_dir))
        update = tracker.final(runs.SUCCEEDED, "")
        self._finish(journal, event, update, committed=True)
        self._outbox.set_state(f"config_version:{migration.id}", target)
        log.info("%s: config migrated %s -> %s", migration.id, source, target)
        return RunResult(run_id, migration.id, detection, event, source, backup_dir)

    # ------------------------------------------------------------ inputs

    def _gather_inputs(
        self,
        plan: Plan,
        tracker: RunTracker,
        run_log: RunLog,
        detection: agent_pb2.MigrationEvent | None,
        detection_event_id: str,
        resumed: WaitingRun | None,
        wait_for_input: bool,
    ) -> Plan | RunResult:
        """Ask for the inputs ``plan`` misses until every answer is right (returns the plan
        made with them) or the run ends or stays waiting (returns its result). Nothing is
        backed up or changed before this returns a plan.

        Right answers are kept (in memory) while wrong ones are asked again, each with its
        error; a restart forgets them all (they are never stored)."""
        migration = plan.migration
        run_id = tracker.run_id
        source = plan.detected.version or ""
        executor = run_log.source("executor")
        waiting_since = resumed.waiting_since_time if resumed is not None else datetime.now(UTC)
        deadline = waiting_since + self._input_timeout
        # The first ask after a resume repeats the recorded request when it asks for the same
        # fields, so answers an admin sent meanwhile (e.g. while the agent was down) count.
        reuse = resumed.request_id if resumed is not None else ""
        record = WaitingRun(
            migration_id=migration.id,
            run_id=run_id,
            started_at=tracker.started_at.isoformat(),
            waiting_since=waiting_since.isoformat(),
            detection_event_id=detection_event_id,
            requested_by=tracker.requested_by,
        )
        answers: dict[str, str] = {}
        if resumed is None:
            tracker.start()  # RUNNING, then AWAITING_INPUT (a resumed run goes straight back)
        while True:
            wrong = dict(sorted(plan.input_errors.items()))
            for name in wrong:
                answers.pop(name, None)
            if wrong:
                executor.warning(
                    "Input rejected: "
                    + "; ".join(f"{name}: {error}" for name, error in wrong.items()),
                    fields=",".join(wrong),
                )
            missing = plan.missing
            if not missing:
                self._waiting.clear(migration.id, run_id)
                executor.info(f"Every input accepted: {', '.join(s.name for s in plan.inputs)}")
                return plan
            names = [spec.name for spec in missing]
            if datetime.now(UTC) >= deadline:
                # Checked before every ask: `once` and `migrate` never wait, so this is where
                # their waiting run times out.
                reason = (
                    f"no input within {duration_text(self._input_timeout)} for: {', '.join(names)}"
                )
                return self._end_unanswered(
                    plan, tracker, run_log, detection, "InputTimeout", reason
                )
            request_id = reuse if reuse and resumed and tuple(names) == resumed.fields else ""
            reuse = ""
            request = agent_pb2.InputRequest(
                request_id=request_id or str(uuid.uuid4()),
                fields=[
                    agent_pb2.InputField(
                        name=spec.name,
                        label=spec.label,
                        secret=spec.secret,
                        error=wrong.get(spec.name, ""),
                    )
                    for spec in missing
                ],
            )
            record = replace(record, request_id=request.request_id, fields=tuple(names))
            self._waiting.save(record)
            self._asked.add(run_id)
            if self._inputs is not None and wait_for_input:
                self._inputs.open(run_id, request.request_id, names)
            executor.info(
                f"Waiting for input: {', '.join(names)}",
                request_id=request.request_id,
                fields=",".join(names),
            )
            tracker.await_input(request)
            log.info("%s: run %s waits for input: %s", migration.id, run_id, ", ".join(names))
            if self._inputs is None or not wait_for_input:
                return RunResult(run_id, migration.id, detection, None, source, waiting=True)
            left = deadline - datetime.now(UTC)
            self._control.waiting(True)  # the check-in loop slows down after a while
            try:
                outcome = self._inputs.wait(
                    run_id,
                    request.request_id,
                    timeout=left.total_seconds(),
                    cancelled=self._control.cancelled,
                    stopping=self._should_stop,
                )
            finally:
                self._control.waiting(False)
            if outcome.kind == ANSWERED:
                answers.update(outcome.answers)
                executor.info(
                    f"Input received for fields {', '.join(sorted(outcome.answers))}",
                    request_id=request.request_id,
                )
                try:
                    plan = make_plan(migration, DiskView(self._root), run_log, answers)
                except DetectionError as exc:
                    return self._end_unanswered(
                        plan, tracker, run_log, detection, exc.exception_type, exc.message
                    )
                continue
            if outcome.kind == STOPPED:
                executor.info(
                    "The agent is stopping; the run keeps waiting for input and asks again at "
                    "the next start"
                )
                return RunResult(run_id, migration.id, detection, None, source, waiting=True)
            if outcome.kind == CANCELLED:
                try:
                    self._control.checkpoint()
                    reason = "cancelled by request"
                except RunCancelled as exc:
                    reason = str(exc)
                return self._end_unanswered(
                    plan, tracker, run_log, detection, "RunCancelled", reason
                )
            reason = f"no input within {duration_text(self._input_timeout)} for: {', '.join(names)}"
            return self._end_unanswered(plan, tracker, run_log, detection, "InputTimeout", reason)

    def _end_unanswered(
        self,
        plan: Plan,
        tracker: RunTracker,
        run_log: RunLog,
        detection: agent_pb2.MigrationEvent | None,
        kind: str,
        reason: str,
    ) -> RunResult:
        """A run that waited for input ends before changing anything: cancelled, timed out, or
        its config can no longer be planned. Reported like any failed or cancelled run."""
        migration = plan.migration
        source = plan.detected.version or ""
        target = migration.current_version
        self._waiting.clear(migration.id, tracker.run_id)
        if self._inputs is not None:
            self._inputs.close(tracker.run_id)
        versions = f"{source} -> {target}"
        step = next((p.step.name for p in plan.steps if p.step.needs is not None), "inputs")
        if kind == "RunCancelled":
            state = runs.CANCELLED
            short = f"Migration {versions} cancelled while waiting for input; nothing was changed"
            full = f"Migration {versions} cancelled while waiting for input ({reason}); "
        else:
            state = runs.FAILED
            short = f"Migration {versions} failed: {reason}; nothing was changed"
            full = f"Migration {versions} failed while waiting for input: {kind}: {reason}; "
        full += "nothing was changed."
        detected_path = plan.detected.path or next(iter(migration.files(self._root)), self._root)
        event = events.migration_event(
            event_type=events.EXECUTION,
            status=events.FAILED,
            run_id=tracker.run_id,
            message=short,
            error_message=full,
            error=events.ErrorInfo(
                failing_step=step,
                file_path=str(detected_path),
                exception_type=kind,
                rollback="not_started",
            ),
            migration_from=source,
            migration_to=target,
            system_info=self._system_info(detected_path),
        )
        executor = run_log.source("executor")
        (executor.warning if state == runs.CANCELLED else executor.error)(full, step=step)
        log.warning("%s: %s", migration.id, full)
        tracker.conclude_steps("", rolled_back=False)
        self._outbox.add(event)
        tracker.finish(state, short)
        return RunResult(tracker.run_id, migration.id, detection, event, source)

    def _boundary(self, step: str) -> None:
        """A step boundary: the test/demo step delay, then stop here if cancelled or shutting
        down (raises :class:`_StepFailure` carrying the step that was about to start)."""
        if self._step_delay > 0:
            self._control.pause(self._step_delay)
        if self._should_stop():
            raise _StepFailure(step, None, MigrationInterrupted("shutdown requested"))
        try:
            self._control.checkpoint()
        except RunCancelled as exc:
            raise _StepFailure(step, None, exc) from exc

    def _apply_steps(
        self, plan: Plan, journal: Journal, tracker: RunTracker, run_log: RunLog
    ) -> Journal:
        done = 0
        for index, planned in enumerate(plan.steps):
            self._boundary(planned.step.name)
            journal = replace(journal, phase=APPLYING, current_step=planned.step.name)
            write_journal(self.journal_path, journal)
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
                write_journal(self.journal_path, journal)
                step_log.info(op.describe(), path=str(op.path))
                self._faults.reached(f"after_write:{done}")
            tracker.step_finished(index, runs.STEP_SUCCEEDED)
            step_log.info(f"Step {index + 1}/{len(plan.steps)} done")
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
        return events.migration_event(
            event_type=events.EXECUTION,
            status=status,
            run_id=journal.run_id,
            event_id=journal.execution_event_id,
            message=short,
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

    def _finish(
        self,
        journal: Journal,
        event: agent_pb2.MigrationEvent,
        update: agent_pb2.RunUpdate,
        committed: bool,
    ) -> None:
        """Store the outcome (event and terminal run snapshot) in the journal (the commit point
        when ``committed``), then in the outbox, then delete the journal: a crash anywhere here
        reports each exactly once (the outbox ignores an id it already holds)."""
        journal = replace(
            journal,
            phase=OUTCOME,
            committed=committed,
            outcome_event=_encode(event),
            outcome_update=_encode_update(update),
        )
        write_journal(self.journal_path, journal)
        self._faults.reached("after_commit")
        self._outbox.add(event)
        self._outbox.runs.add_update(update)
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
        run_log = RunLog(journal.run_id)
        run_log.attach(self._outbox.runs)  # continues the run's log (persisted seq counter)
        executor = run_log.source("executor")
        if journal.outcome_event:
            event = _decode(journal.outcome_event)
            log.warning("recovering run %s: recording its stored outcome", journal.run_id)
            executor.warning(
                "Agent restarted after a crash; recorded the stored outcome of this run: "
                f"{event.message}",
                phase=journal.phase,
            )
        else:
            event = self._interrupted_event(journal)
            executor.error(event.error_message, phase=journal.phase, step=journal.current_step)
        if journal.outcome_update:
            update = _decode_update(journal.outcome_update)
        else:
            # Journal the decided outcome first: a crash before the journal is cleared then
            # records these same ids again (exactly once), never a second terminal snapshot.
            update = self._recovered_update(journal, event)
            journal = replace(
                journal,
                phase=OUTCOME,
                committed=event.status == events.SUCCESS,
                outcome_event=_encode(event),
                outcome_update=_encode_update(update),
            )
            write_journal(self.journal_path, journal)
        self._outbox.add(event)
        self._outbox.runs.add_update(update)
        self._faults.reached("before_journal_clear")
        clear_journal(self.journal_path)
        return event

    def _recovered_update(
        self, journal: Journal, event: agent_pb2.MigrationEvent
    ) -> agent_pb2.RunUpdate:
        """The terminal snapshot of a run resolved by :meth:`recover` (journal without one)."""
        tracker = RunTracker(
            self._outbox.runs,
            run_id=journal.run_id,
            migration_id=journal.migration_id,
            migration_from=journal.from_version,
            migration_to=journal.to_version,
            steps=journal.steps,
            requested_by=journal.requested_by_action_id,
            started_at=_parse_time(journal.started_at),
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


class _StepFailure(AgentError):
    """Carries the failing step and file out of the apply loop."""

    def __init__(self, step: str, path: Path | None, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.step = step
        self.path = path
        self.cause = cause
