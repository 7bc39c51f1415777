"""Gathering a run's inputs: ask the server for the values a plan misses, wait for the answers,
plan again with them, and ask again for the wrong ones, until every value is right or the run
ends (cancelled, timed out) or stays waiting (the agent stops, or does not wait).

Nothing is backed up or changed while a run gathers inputs. A waiting run is recorded (see
:mod:`agent.migrations.waiting`) so the next agent process resumes it with the same run id.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from agent import events, runs
from agent.inputs import ANSWERED, CANCELLED, STOPPED, InputBroker
from agent.migrations.context import EngineContext
from agent.migrations.model import DetectionError, DiskView
from agent.migrations.plan import Plan, make_plan
from agent.migrations.result import RunResult
from agent.migrations.waiting import WaitingRun, WaitingRuns
from agent.runlog import RunLog
from agent.runs import RunCancelled, RunTracker
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)


def duration_text(span: timedelta) -> str:
    """``24 h``, ``90 min``, ``1.5 s``: a timeout as a person reads it."""
    seconds = span.total_seconds()
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


class InputGatherer:
    """Asks for the inputs of runs and keeps the records of the runs that wait for them."""

    def __init__(
        self,
        context: EngineContext,
        waiting: WaitingRuns,
        inputs: InputBroker | None,
        input_timeout: timedelta,
    ) -> None:
        """``inputs``: where a run waits for the answers (None: a run that needs inputs reports
        AWAITING_INPUT and returns, still waiting); ``input_timeout``: how long a run may wait in
        total (across agent restarts) before it fails."""
        self._context = context
        self._waiting = waiting
        self._inputs = inputs
        self._input_timeout = input_timeout
        self._asked: set[str] = set()  # runs this process recorded as waiting

    def asked(self, run_id: str) -> bool:
        """Whether this process (not an earlier one) asked for the inputs of ``run_id``."""
        return run_id in self._asked

    def forget(self, migration_id: str, run_id: str) -> None:
        """The run ended: drop its waiting record and close its ask in the input broker."""
        self._waiting.clear(migration_id, run_id)
        if self._inputs is not None:
            self._inputs.close(run_id)

    def gather(
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
        made with them) or the run ends or stays waiting (returns its result).

        Right answers are kept (in memory) while wrong ones are asked again, each with its
        error; a restart forgets them all (they are never stored)."""
        migration = plan.migration
        run_id = tracker.run_id
        source = plan.detected.version or ""
        executor = run_log.source("executor")
        control = self._context.control
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
            timed_out = (
                f"no input within {duration_text(self._input_timeout)} for: {', '.join(names)}"
            )
            if datetime.now(UTC) >= deadline:
                # Checked before every ask: `once` and `migrate` never wait, so this is where
                # their waiting run times out.
                return self.end_unanswered(
                    plan, tracker, run_log, detection, "InputTimeout", timed_out
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
            control.waiting(True)  # the check-in loop slows down after a while
            try:
                outcome = self._inputs.wait(
                    run_id,
                    request.request_id,
                    timeout=left.total_seconds(),
                    cancelled=control.cancelled,
                    stopping=self._context.should_stop,
                )
            finally:
                control.waiting(False)
            if outcome.kind == ANSWERED:
                answers.update(outcome.answers)
                executor.info(
                    f"Input received for fields {', '.join(sorted(outcome.answers))}",
                    request_id=request.request_id,
                )
                try:
                    plan = make_plan(migration, DiskView(self._context.root), run_log, answers)
                except DetectionError as exc:
                    return self.end_unanswered(
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
                    control.checkpoint()
                    reason = "cancelled by request"
                except RunCancelled as exc:
                    reason = str(exc)
                return self.end_unanswered(
                    plan, tracker, run_log, detection, "RunCancelled", reason
                )
            return self.end_unanswered(plan, tracker, run_log, detection, "InputTimeout", timed_out)

    def end_unanswered(
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
        self.forget(migration.id, tracker.run_id)
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
        detected_path = plan.detected.path or self._context.first_file(migration)
        event = events.migration_event(
            event_type=tracker.labels.execution_type,
            labels=tracker.labels,
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
            system_info=self._context.system_info(detected_path),
        )
        executor = run_log.source("executor")
        (executor.warning if state == runs.CANCELLED else executor.error)(full, step=step)
        log.warning("%s: %s", migration.id, full)
        tracker.conclude_steps("", rolled_back=False)
        self._context.outbox.add(event)
        tracker.finish(state, short)
        return RunResult(tracker.run_id, migration.id, detection, event, source)
