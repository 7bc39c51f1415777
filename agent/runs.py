"""Migration runs: progress snapshots (``RunUpdate``) and the control of the run in progress.

What is a run: one detection + execution attempt of one registered migration, identified by the
``run_id`` its events carry. The agent makes a run when

* a migration is needed (the run executes it: RUNNING, a snapshot at each step start and end,
  then SUCCEEDED, FAILED, PARTIAL (the rollback failed) or CANCELLED). A run whose steps need
  inputs first reports AWAITING_INPUT (its ``input_request`` lists every input still missing,
  a new ``request_id`` per ask) before anything is backed up or changed, and RUNNING again once
  every answer was right (see :mod:`agent.inputs`);
* detection failed and that outcome is reported (a FAILED run with 0 steps; the same failure
  seen again by the periodic re-detection is neither a new event nor a new run);
* the server asked for it (action ``run_migration``): always a run, even when nothing is needed
  (SUCCEEDED with 0 steps, its log saying why), so the person who clicked sees an answer;
* the server asked to revert a finished spec run (action ``revert_run``): a run of its own
  whose snapshots carry ``reverts_run_id`` (FAILED with 0 steps when it was refused).

A run of a server-defined spec has the spec id as ``migration_id`` and its revision as
``spec_revision`` (:class:`agent.events.RunLabels`).

An automatic ``not_needed`` detection is no run: a healthy fleet would otherwise add a run per
host per interval.

Snapshots are complete (all steps so far), so the latest one alone describes the run; each has a
new UUIDv7 ``update_id``. ``steps_done`` counts the steps that were applied (succeeded, or later
rolled back), so a run that failed at step 3 of 3 shows 2/3, never 100 %. Step statuses:
pending → running → succeeded | failed; after a rollback the applied ones become
``rolled_back``, and those never started ``skipped``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.errors import AgentError
from agent.events import NO_LABELS, RunLabels
from agent.run_queue import RunQueue
from agent.uuid7 import uuid7_str
from flagpost.v1 import agent_pb2

RUNNING = agent_pb2.RUN_STATE_RUNNING
AWAITING_INPUT = agent_pb2.RUN_STATE_AWAITING_INPUT
SUCCEEDED = agent_pb2.RUN_STATE_SUCCEEDED
FAILED = agent_pb2.RUN_STATE_FAILED
PARTIAL = agent_pb2.RUN_STATE_PARTIAL
CANCELLED = agent_pb2.RUN_STATE_CANCELLED
TERMINAL = frozenset({SUCCEEDED, FAILED, PARTIAL, CANCELLED})

STEP_PENDING = "pending"
STEP_RUNNING = "running"
STEP_SUCCEEDED = "succeeded"
STEP_FAILED = "failed"
STEP_ROLLED_BACK = "rolled_back"
STEP_SKIPPED = "skipped"
_APPLIED = frozenset({STEP_SUCCEEDED, STEP_ROLLED_BACK})


def state_name(state: int) -> str:
    """``SUCCEEDED`` for ``RUN_STATE_SUCCEEDED``."""
    name: str = agent_pb2.RunState.Name(state)
    return name.removeprefix("RUN_STATE_")


@dataclass(slots=True)
class _Step:
    name: str
    status: str = STEP_PENDING
    error: str = ""
    duration_ms: int = 0
    started: float = 0.0


class RunTracker:
    """The progress of one run; :meth:`emit` stores a snapshot in the outbox (``queue``)."""

    def __init__(
        self,
        queue: RunQueue,
        *,
        run_id: str,
        migration_id: str,
        migration_from: str,
        migration_to: str,
        steps: Sequence[str] = (),
        requested_by: str = "",
        started_at: datetime | None = None,
        labels: RunLabels = NO_LABELS,
    ) -> None:
        """``labels``: the spec and action of the run (``requested_by`` wins over
        ``labels.action_id``); its snapshots carry the spec revision and reverted run."""
        self._queue = queue
        self.run_id = run_id
        self.migration_id = migration_id
        self.migration_from = migration_from
        self.migration_to = migration_to
        self.requested_by = requested_by
        self.labels = labels.asked_by(requested_by)
        self.started_at = started_at or datetime.now(UTC)
        self.state = RUNNING
        self.error_message = ""
        self.finished_at: datetime | None = None
        self.input_request: agent_pb2.InputRequest | None = None
        self._steps = [_Step(name) for name in steps]

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self._steps]

    def index(self, name: str) -> int | None:
        """Position of the step called ``name`` (None if it is not a step of this run)."""
        return next((i for i, step in enumerate(self._steps) if step.name == name), None)

    def snapshot(self, update_id: str | None = None) -> agent_pb2.RunUpdate:
        """The run as it is now, as a ``RunUpdate`` (not stored)."""
        update = agent_pb2.RunUpdate(
            update_id=update_id or uuid7_str(),
            run_id=self.run_id,
            state=self.state,
            steps_done=sum(step.status in _APPLIED for step in self._steps),
            steps_total=len(self._steps),
            migration_id=self.migration_id,
            migration_from=self.migration_from,
            migration_to=self.migration_to,
            error_message=self.error_message,
            requested_by_action_id=self.requested_by,
            spec_revision=self.labels.spec_revision,
            reverts_run_id=self.labels.reverts_run_id,
        )
        for index, step in enumerate(self._steps):
            update.steps.append(
                agent_pb2.StepResult(
                    index=index,
                    name=step.name,
                    status=step.status,
                    error=step.error,
                    duration_ms=step.duration_ms,
                )
            )
        if self.state == AWAITING_INPUT and self.input_request is not None:
            update.input_request.CopyFrom(self.input_request)
        update.started_at.FromDatetime(self.started_at)
        if self.finished_at is not None:
            update.finished_at.FromDatetime(self.finished_at)
        update.occurred_at.FromDatetime(datetime.now(UTC))
        return update

    def emit(self) -> agent_pb2.RunUpdate:
        """Store a snapshot durably in the outbox and return it."""
        update = self.snapshot()
        self._queue.add_update(update)
        return update

    def start(self) -> agent_pb2.RunUpdate:
        """The run started (or resumed after its inputs were answered): RUNNING."""
        self.state = RUNNING
        self.input_request = None
        return self.emit()

    def await_input(self, request: agent_pb2.InputRequest) -> agent_pb2.RunUpdate:
        """The run waits for the inputs ``request`` lists: AWAITING_INPUT."""
        self.state = AWAITING_INPUT
        self.input_request = request
        return self.emit()

    def step_started(self, index: int) -> agent_pb2.RunUpdate:
        step = self._steps[index]
        step.status, step.started = STEP_RUNNING, time.monotonic()
        return self.emit()

    def step_finished(self, index: int, status: str, error: str = "") -> agent_pb2.RunUpdate:
        step = self._steps[index]
        step.status, step.error = status, error
        if step.started:
            step.duration_ms = int((time.monotonic() - step.started) * 1000)
        return self.emit()

    def set_step(self, index: int, status: str, error: str = "") -> None:
        """Change a step without emitting (recovery, or before a final snapshot)."""
        self._steps[index].status = status
        self._steps[index].error = error

    def conclude_steps(self, error: str, *, rolled_back: bool) -> None:
        """After a failure: the running step failed with ``error``, applied steps were rolled
        back (if the rollback succeeded), steps never started were skipped."""
        for step in self._steps:
            if step.status == STEP_RUNNING:
                if step.started:
                    step.duration_ms = int((time.monotonic() - step.started) * 1000)
                step.status, step.error = STEP_FAILED, error
            elif step.status == STEP_SUCCEEDED and rolled_back:
                step.status = STEP_ROLLED_BACK
            elif step.status == STEP_PENDING:
                step.status = STEP_SKIPPED

    def final(
        self, state: int, error_message: str = "", update_id: str | None = None
    ) -> agent_pb2.RunUpdate:
        """The terminal snapshot (not stored: the engine journals it first, see
        :meth:`agent.migrations.journal.Journal.with_outcome`)."""
        self.state = state
        self.error_message = error_message
        self.input_request = None
        self.finished_at = datetime.now(UTC)
        return self.snapshot(update_id)

    def finish(self, state: int, error_message: str = "") -> agent_pb2.RunUpdate:
        """Store the terminal snapshot (runs without a journal: detection-only runs)."""
        update = self.final(state, error_message)
        self._queue.add_update(update)
        return update


class RunCancelled(AgentError):
    """The server cancelled the run in progress (action ``cancel_run``)."""


class RunControl:
    """Cancellation of the run in progress and the "a run is live" signal; thread-safe.

    The migration engine calls :meth:`begin`/:meth:`end` around a run and :meth:`checkpoint` at
    each step boundary; the check-in loop calls :meth:`cancel` for a ``cancel_run`` action and
    asks :meth:`live` whether to use the fast cadence (a run is active or ended less than
    ``linger`` ago). :attr:`wake` is set whenever a run starts or ends so the check-in loop can
    report at once.
    """

    def __init__(
        self, stop: threading.Event | None = None, linger: timedelta | None = None
    ) -> None:
        self._stop = stop or threading.Event()
        self._linger = (linger or timedelta(seconds=5)).total_seconds()
        self._lock = threading.Lock()
        self._active: str | None = None
        self._cancel = threading.Event()
        self._cancel_reason = ""
        self._ended_at: float | None = None
        self._waiting_since: float | None = None
        self.wake = threading.Event()

    @property
    def active_run_id(self) -> str | None:
        with self._lock:
            return self._active

    def begin(self, run_id: str) -> None:
        """``run_id`` is now the run in progress."""
        with self._lock:
            self._active = run_id
            self._cancel.clear()
            self._cancel_reason = ""
            self._waiting_since = None
        self.wake.set()

    def end(self, run_id: str) -> None:
        """``run_id`` is over (idempotent)."""
        with self._lock:
            if self._active != run_id:
                return
            self._active = None
            self._ended_at = time.monotonic()
            self._waiting_since = None
        self.wake.set()

    def cancel(self, run_id: str, reason: str = "") -> bool:
        """Ask the run ``run_id`` to stop at its next step boundary; False if it is not the run
        in progress."""
        with self._lock:
            if self._active != run_id:
                return False
            self._cancel_reason = reason
            self._cancel.set()
            return True

    def waiting(self, waiting: bool) -> None:
        """The run in progress waits for input (True) or goes on (False)."""
        with self._lock:
            self._waiting_since = time.monotonic() if waiting else None

    def hurry_interval(
        self, fast: float, waiting_fast_for: float = 300.0, waiting_interval: float = 5.0
    ) -> float | None:
        """How soon the next check-in is due because of a run: ``fast`` while a run is live and
        during the first ``waiting_fast_for`` seconds of a wait for input (someone at the page
        gets an answer through within a second), then ``waiting_interval`` for the rest of a
        wait that may last a day; None when no run hurries the check-in."""
        with self._lock:
            since = self._waiting_since
        if since is not None and time.monotonic() - since >= waiting_fast_for:
            return waiting_interval
        return fast if self.live() else None

    def live(self) -> bool:
        """A run is in progress or ended less than ``linger`` ago."""
        with self._lock:
            if self._active is not None:
                return True
            ended = self._ended_at
        return ended is not None and time.monotonic() - ended < self._linger

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (the test/demo step delay), waking early on cancel or shutdown."""
        deadline = time.monotonic() + seconds
        while not self._cancel.is_set() and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cancel.wait(min(left, 0.05))

    def cancelled(self) -> bool:
        """True once the run in progress was cancelled (a run waiting for input polls this)."""
        return self._cancel.is_set()

    def checkpoint(self) -> None:
        """At a step boundary: raise :class:`RunCancelled` if the run was cancelled."""
        if self._cancel.is_set():
            raise RunCancelled(self._cancel_reason or "cancelled by request")
