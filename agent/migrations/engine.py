"""The migration engine: detect → plan → gather inputs → back up → apply each step → verify.

Every outcome is an event written to the outbox:

* detection ``failed`` (bad config), ``not_needed`` (current version, or no config at all) or
  ``success`` (a migration is needed, from → to); then, for a needed migration,
* execution ``success``, ``failed`` (rolled back) or ``partial`` (the rollback itself failed,
  the config may be half-migrated; the backup path is in the event).

:class:`MigrationEngine` runs one attempt from detection to outcome and hands each job to its
module: planning (:mod:`agent.migrations.plan`), gathering inputs
(:mod:`agent.migrations.gather`), execution with rollback (:mod:`agent.migrations.execute`) and
crash recovery (:mod:`agent.migrations.recovery`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import events, runs
from agent.config import state_backups_dir, state_journal_path
from agent.faults import FaultInjector
from agent.inputs import InputBroker
from agent.migrations.context import EngineContext, SystemInfo
from agent.migrations.execute import Executor
from agent.migrations.gather import InputGatherer
from agent.migrations.model import DetectionError, DiskView, Migration
from agent.migrations.plan import Plan, fingerprint, make_plan
from agent.migrations.recovery import recover
from agent.migrations.result import RunResult
from agent.migrations.waiting import WaitingRun, WaitingRuns
from agent.outbox import Outbox
from agent.runlog import RunLog
from agent.runs import RunControl, RunTracker
from agent.sysinfo import system_info as default_system_info
from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One attempt at a migration: the log of its run (and so the run id), the server action
    that asked for it ("" if none) and when the run started."""

    migration: Migration
    run_log: RunLog
    requested_by: str
    started_at: datetime


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
        self._context = EngineContext(
            root=root,
            journal_path=state_journal_path(state_dir),
            backups_dir=state_backups_dir(state_dir),
            outbox=outbox,
            faults=faults or FaultInjector(),
            system_info=system_info or functools.partial(default_system_info, root=root),
            should_stop=should_stop or (lambda: False),
            control=control or RunControl(),
        )
        self._inputs = inputs
        self._waiting = WaitingRuns(state_dir)
        self._gatherer = InputGatherer(self._context, self._waiting, inputs, input_timeout)
        self._executor = Executor(self._context, step_delay.total_seconds())
        self._last_detection: dict[str, str] = {}
        # Per migration: fingerprint of the files (and their directories) a failed execution
        # left behind; the periodic re-detection does not execute again from the same state.
        self._failed_state: dict[str, str] = {}

    def plan(self, migration: Migration) -> Plan:
        """The plan for ``migration`` on the current disk state (dry run)."""
        return make_plan(migration, DiskView(self._context.root))

    def recover(self) -> agent_pb2.MigrationEvent | None:
        """Resolve a journal left by a crash (call before anything else at start); see
        :func:`agent.migrations.recovery.recover`."""
        return recover(self._context)

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
            self._gatherer.forget(migration.id, result.run_id)
        return result

    # ------------------------------------------------------------ runs waiting for input

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

    # ------------------------------------------------------------ one attempt

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
        attempt = _Attempt(migration, run_log, requested_by, started_at)
        detector = run_log.source("detector")
        detector.info(
            f"Detecting the version of {migration.id}"
            + (f" (requested by action {requested_by})" if requested_by else ""),
            migration_id=migration.id,
        )
        if resumed is not None and self._gatherer.asked(resumed.run_id):
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
        config_hint = self._context.first_file(migration)
        try:
            plan = make_plan(migration, DiskView(self._context.root), run_log)
        except DetectionError as exc:
            path = exc.path or config_hint
            event = events.migration_event(
                event_type=events.DETECTION,
                labels=migration.labels.asked_by(requested_by),
                status=events.FAILED,
                run_id=run_id,
                message=f"Detection failed: {exc.message}",
                error_message=exc.message,
                error=replace(exc.error_info(), file_path=str(path)),
                migration_from=exc.version,
                migration_to=migration.current_version,
                system_info=self._context.system_info(path),
            )
            recorded = self._record_detection(migration, f"failed:{exc.message}", event, report)
            self._context.outbox.set_state(f"config_version:{migration.id}", "")
            detector.error(
                f"Detection failed: {exc.message}",
                file=str(path),
                line=exc.line,
                exception_type=exc.exception_type,
            )
            if recorded is not None:
                self._detection_run(attempt, exc.version, exc.message, resumed=resumed is not None)
            else:
                run_log.discard()
            return RunResult(run_id, migration.id, recorded, None, "")
        detected = plan.detected
        version = detected.version or ""
        self._context.outbox.set_state(f"config_version:{migration.id}", version)
        info_path = detected.path or config_hint
        if not plan.needed:
            if detected.version is None:
                message = f"{detected.message}; nothing to migrate"
            else:
                message = f"Config is at version {version} (current); no migration needed"
            event = events.migration_event(
                event_type=events.DETECTION,
                labels=migration.labels.asked_by(requested_by),
                status=events.NOT_NEEDED,
                run_id=run_id,
                message=message,
                migration_from=version,
                migration_to=migration.current_version,
                system_info=self._context.system_info(info_path),
            )
            recorded = self._record_detection(migration, f"not_needed:{version}", event, report)
            detector.info(message, version=version or "none")
            if resumed is not None:
                # The config changed while the run waited (someone migrated it by hand?).
                error = f"The config changed while the run waited for input: {message}"
                self._detection_run(attempt, version, error, resumed=True)
            elif requested_by:
                self._detection_run(attempt, version, "")
            else:
                run_log.discard()
            return RunResult(run_id, migration.id, recorded, None, version)
        if not report and self._failed_state.get(migration.id) == fingerprint(plan):
            # Failed before from exactly this state: retrying every interval would only add a
            # backup and a failed run each time (a restart loop). Retried when the files
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
        steps = [planned.step.name for planned in plan.steps]
        with self._live_run(attempt, version, steps) as tracker:
            result = self._execute(
                plan, run_id, info_path, tracker, run_log, resumed, wait_for_input
            )
        if result.failed:
            self._failed_state[migration.id] = fingerprint(plan)
        else:
            self._failed_state.pop(migration.id, None)
        return result

    def _detection_run(
        self, attempt: _Attempt, version: str, error: str, *, resumed: bool = False
    ) -> None:
        """A run without steps: detection failed (``error``) or nothing was needed. A resumed
        run that was cancelled while not in progress ends CANCELLED instead."""
        with self._live_run(attempt, version) as tracker:
            tracker.start()
            cancelled = self._cancel_mark(attempt.migration.id, tracker.run_id) if resumed else ""
            if cancelled:
                message = f"Run cancelled while waiting for input ({cancelled}); nothing changed"
                attempt.run_log.source("executor").warning(message)
                tracker.finish(runs.CANCELLED, message)
            else:
                tracker.finish(runs.FAILED if error else runs.SUCCEEDED, error)

    @contextlib.contextmanager
    def _live_run(
        self, attempt: _Attempt, version: str, steps: Sequence[str] = ()
    ) -> Iterator[RunTracker]:
        """The run of ``attempt`` in progress: its tracker, with its log reported through the
        outbox and the RunControl told the run began (and, on leaving, that it ended)."""
        run_log = attempt.run_log
        tracker = RunTracker(
            self._context.outbox.runs,
            run_id=run_log.run_id,
            migration_id=attempt.migration.id,
            migration_from=version,
            migration_to=attempt.migration.current_version,
            steps=steps,
            requested_by=attempt.requested_by,
            started_at=attempt.started_at,
            labels=attempt.migration.labels,
        )
        run_log.attach(self._context.outbox.runs)
        self._context.control.begin(run_log.run_id)
        try:
            yield tracker
        finally:
            self._context.control.end(run_log.run_id)

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
        self._context.outbox.add(event)
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
        """A needed migration: report it (unless resumed), gather its inputs, execute it."""
        migration = plan.migration
        source = plan.detected.version or ""
        target = migration.current_version
        info = self._context.system_info(config_path)
        self._last_detection[migration.id] = f"needed:{source}"
        detection: agent_pb2.MigrationEvent | None = None
        if resumed is None:
            detection = events.migration_event(
                event_type=events.DETECTION,
                labels=tracker.labels,
                status=events.SUCCESS,
                run_id=run_id,
                message=f"Migration needed: {source} -> {target}",
                migration_from=source,
                migration_to=target,
                system_info=info,
            )
            self._context.outbox.add(detection)
            detection_event_id = detection.event_id
        else:
            detection_event_id = resumed.detection_event_id  # reported before the restart
            # Cancelled while it was not in progress (read after RunControl.begin: a cancel
            # arriving from now on reaches the run through the RunControl).
            cancelled = self._cancel_mark(migration.id, run_id)
            if cancelled:
                return self._gatherer.end_unanswered(
                    plan, tracker, run_log, detection, "RunCancelled", cancelled
                )
        if plan.inputs:
            gathered = self._gatherer.gather(
                plan, tracker, run_log, detection, detection_event_id, resumed, wait_for_input
            )
            if isinstance(gathered, RunResult):
                return gathered
            plan = gathered
        return self._executor.execute(
            plan, tracker, run_log, config_path, detection, detection_event_id, info
        )
