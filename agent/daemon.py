"""The agent's lifecycle: recover → migrate → check in, once or in a loop.

``Agent`` owns the outbox, the migration engine and the gRPC client. ``run()`` loops until
:meth:`Agent.request_stop` (SIGTERM/SIGINT): the step in progress finishes (a migration stops
between steps and rolls back), then the loop exits; a second signal exits the process at once
(the journal makes that safe). :meth:`Agent.shutdown` is idempotent; ``with Agent(...)`` calls it.

Check-in timing (first one jittered, the server's interval with jitter, backoff with full jitter
and ``retry-after-ms`` after failures) is :class:`agent.schedule.CheckInSchedule`.

Threads in ``run``: the main thread is the migration worker (start-up migration, periodic
re-detection, runs the server requested, in that order of arrival); check-ins run on their own
thread (:class:`agent.checkin_loop.CheckInLoop`, fast cadence while a run is live) so a run's log
lines and progress reach the server while a step is still running, and a ``cancel_run`` action
reaches the run in progress at once (it stops at the next step boundary). ``once`` needs no
thread: it migrates, checks in, executes the runs the server asked for, and checks in again to
report them (at most :data:`ONCE_ACTION_ROUNDS` times).

Server-defined specs (:mod:`agent.specs.actions`): a ``preview_migration``, ``revert_run`` or
``run_migration`` about a spec is checked and the spec installed on the check-in thread, then
queued for the migration worker like any requested run. Installed specs are detected at every
cycle (``HostFacts.specs``) and executed only when an action asks.

Re-detection in ``run``: every check-in interval each registered migration is detected again. A
needed migration is executed and reported, except that an execution that failed is not retried
automatically while its files and their directories are unchanged (it is retried when they
change, at the next start, or when the server asks with ``run_migration``); a ``not_needed`` or
``failed`` detection is reported at start and then only when its outcome changes (otherwise a
healthy fleet would add one History row per host per minute, and a broken config would repeat
the same error, and a new backup, forever).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.action_verify import VerifiedAction
from agent.actions import (
    PREVIEW_MIGRATION,
    REVERT_RUN,
    RUN_MIGRATION,
    ActionHandler,
    RunRequest,
    Trust,
)
from agent.checkin import CheckInClient, CheckInResult
from agent.checkin_loop import CheckInLoop
from agent.config import AgentConfig
from agent.diagnose import state_dir_error
from agent.enroll import Credentials, EnrollmentError, load_credentials
from agent.faults import FaultInjector
from agent.inputs import PROVIDE_INPUT, InputBroker, ProvideInputHandler
from agent.migrations.engine import MigrationEngine
from agent.migrations.model import Migration
from agent.migrations.registry import MigrationRegistry, default_registry
from agent.migrations.result import RunResult
from agent.outbox import Outbox
from agent.runs import RunControl
from agent.schedule import CheckInSchedule
from agent.specs.builtin import MIGRATION_ID, json_conf
from agent.sysinfo import host_facts
from agent.tls import ChannelSecurity
from flagpost.v1 import agent_pb2

if TYPE_CHECKING:
    from agent.specs.actions import SpecActions

log = logging.getLogger(__name__)

ONCE_ACTION_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class Status:
    """What ``flagpost-agent status`` shows."""

    agent_id: str
    server: str
    config_version: str
    outbox_depth: int
    quarantined: list[dict[str, str]]
    last_checkin_at: str
    last_error: str
    last_error_at: str
    journal_pending: bool
    runs: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "server": self.server,
            "config_version": self.config_version,
            "outbox_depth": self.outbox_depth,
            "quarantined": self.quarantined,
            "last_checkin_at": self.last_checkin_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "journal_pending": self.journal_pending,
            "runs": self.runs,
        }


class Agent:
    """One agent process. Use ``with Agent(config) as agent:`` or call :meth:`shutdown`."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        registry: MigrationRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._registry = registry if registry is not None else default_registry()
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._signals = 0
        self._previous_handlers: dict[int, Any] = {}
        self._closed = False
        self._client: CheckInClient | None = None
        try:
            self._outbox = Outbox(config.outbox_path)
        except (OSError, sqlite3.Error) as exc:
            raise state_dir_error(config.state_dir, config.outbox_path, exc) from exc
        self._control = RunControl(self._stop, config.fast_checkin_linger)
        self._work = threading.Event()  # wakes the worker: a run was requested, or stop
        self._requests: deque[RunRequest] = deque()
        self._requests_lock = threading.Lock()
        self._actions = ActionHandler(
            self._control,
            [migration.id for migration in self._registry],
            self._submit,
            self._trust,
            cancel_waiting=self._cancel_waiting,
        )
        # Runs waiting for input (agent/inputs.py): only the daemon waits; `once` and
        # `migrate` leave such a run waiting (the daemon asks again when it starts; each of
        # them resumes it, failing it once its input deadline has passed).
        self._inputs = InputBroker()
        self._wait_for_input = False
        self._actions.register(
            PROVIDE_INPUT, ProvideInputHandler(self._inputs, ActionHandler.notice)
        )
        self._engine = MigrationEngine(
            config.root,
            config.state_dir,
            self._outbox,
            faults=FaultInjector(config.crash_at),
            should_stop=self._stop.is_set,
            control=self._control,
            step_delay=config.step_delay,
            inputs=self._inputs,
            input_timeout=config.input_timeout,
        )
        # Server-defined specs (agent/specs/actions.py): loaded on first use, so an agent with
        # none installed never imports the spec modules (idle RSS, tests/bench/agent_rss.py).
        self._specs: SpecActions | None = None
        self._specs_lock = threading.Lock()
        self._builtin_run = self._actions.kind_handler(RUN_MIGRATION)
        self._actions.register(RUN_MIGRATION, self._on_run_migration)
        for kind in (PREVIEW_MIGRATION, REVERT_RUN):
            self._actions.register(kind, functools.partial(self._spec_action, kind))
        self._schedule = CheckInSchedule(
            config.checkin_interval,
            config.retry,
            startup_jitter=config.startup_jitter,
            rng=self._rng,
        )

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Close the gRPC channel and the outbox, restore signal handlers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._client is not None:
            self._client.close()
            self._client = None
        self._outbox.close()
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop after the current step."""
        self._stop.set()
        self._work.set()
        self._control.wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def control(self) -> RunControl:
        """The run in progress (cancel, live)."""
        return self._control

    @property
    def interval(self) -> timedelta:
        """The current check-in interval (the server may change it)."""
        return self._schedule.interval

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: first one stops gracefully, a second exits at once.

        The signals are also unblocked: a parent that blocked them (a supervisor, or a script
        using ``sigwait``) passes its signal mask on to us, and a daemon must still stop on
        SIGTERM. Call before :meth:`run` starts its check-in thread (threads inherit the mask)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"flagpost-agent: second signal, exiting now\n")
            os._exit(128 + signum)
        log.info("received %s: stopping after the current step", signal.Signals(signum).name)
        self.request_stop()

    # ------------------------------------------------------------ work

    def recover(self) -> agent_pb2.MigrationEvent | None:
        """Resolve a migration journal left by a crash (first thing at start)."""
        return self._engine.recover()

    def migrate(
        self, *, report_unchanged: bool = True, request: RunRequest | None = None
    ) -> list[RunResult]:
        """Detect (and execute where needed) every registered migration, or the one ``request``
        names (a run the server asked for: always recorded, always a run). Installed specs are
        detected too (their versions go into the next check-in's facts) but never executed
        here unless ``request`` names one: a ``run_migration`` action, or the resumption of
        its run waiting for input (after a restart, or cancelled while not in progress)."""
        if request is None and self._has_specs():
            self.specs.facts()
        spec_run = self._spec_request(request) if request is not None else None
        if spec_run is not None:
            return spec_run
        results = []
        for migration in self._registry:
            if self._stop.is_set():
                break
            if request is not None and request.migration_id not in ("", migration.id):
                continue
            resume = request.resume_run_id if request is not None else ""
            if resume and self._engine.waiting_run_id(migration.id) != resume:
                continue  # the cancelled waiting run already ended
            results.append(
                self._engine.run(
                    migration,
                    report_unchanged=report_unchanged,
                    requested_by=request.action_id if request is not None and not resume else "",
                    wait_for_input=self._wait_for_input,
                )
            )
        return results

    def _spec_request(self, request: RunRequest) -> list[RunResult] | None:
        """The run of the installed spec ``request`` names (None: it names no such spec)."""
        spec_id = request.migration_id
        registered = {migration.id for migration in self._registry}
        if not spec_id or spec_id in registered or not self._has_specs():
            return None
        installed = self.specs.store.get(spec_id)
        if installed is None:
            return None
        resume = request.resume_run_id
        if resume and self._engine.waiting_run_id(spec_id) != resume:
            return []  # the cancelled waiting run already ended
        return [self.specs.run(installed, "" if resume else request.action_id)]

    def resume_waiting_specs(self) -> int:
        """Resume every installed spec's run left waiting for input (the daemon at start, as
        it does for the registered migrations); returns how many were resumed."""
        if not self._has_specs():
            return 0
        resumed = 0
        for installed in self.specs.store.all():
            run_id = self._engine.waiting_run_id(installed.spec_id)
            if run_id is not None and not self._stop.is_set():
                self.migrate(request=RunRequest("", installed.spec_id, resume_run_id=run_id))
                resumed += 1
        return resumed

    def run_migration(self, migration: Migration, *, requested_by: str = "") -> RunResult:
        """One attempt at ``migration``, which need not be registered (``flagpost-agent spec
        run``, an installed spec): detected, executed if needed, always recorded; a run that
        needs inputs waits like those of the registered migrations (the daemon waits, ``once``
        and ``migrate`` leave it waiting). ``requested_by``: the server action asking."""
        return self._engine.run(
            migration, requested_by=requested_by, wait_for_input=self._wait_for_input
        )

    @property
    def engine(self) -> MigrationEngine:
        """The migration engine of this agent (journal, backups and outbox in its state dir)."""
        return self._engine

    @property
    def specs(self) -> SpecActions:
        """The installed server-defined specs and their actions (loaded on first use)."""
        with self._specs_lock:
            if self._specs is None:
                from agent.specs.actions import SpecActions

                self._specs = SpecActions(
                    self._config,
                    self._engine,
                    self._outbox,
                    lambda migration, action_id: self.run_migration(
                        migration, requested_by=action_id
                    ),
                    self._submit,
                    self._builtin_run,
                    [migration.id for migration in self._registry],
                )
            return self._specs

    def _has_specs(self) -> bool:
        return self._specs is not None or self._config.specs_dir.is_dir()

    def _on_run_migration(self, action: VerifiedAction, outbox: Outbox) -> str:
        if "spec" in action.params or self._has_specs():
            return self.specs.handle(RUN_MIGRATION, action, outbox)
        assert self._builtin_run is not None
        return self._builtin_run(action, outbox)

    def _spec_action(self, kind: str, action: VerifiedAction, outbox: Outbox) -> str:
        return self.specs.handle(kind, action, outbox)

    def _spec_facts(self) -> list[agent_pb2.SpecVersion]:
        return self.specs.facts() if self._has_specs() else []

    def _cancel_waiting(self, run_id: str, reason: str) -> str | None:
        return self._engine.cancel_waiting(run_id, reason)

    def _submit(self, request: RunRequest) -> None:
        with self._requests_lock:
            self._requests.append(request)
        self._work.set()

    def _next_request(self) -> RunRequest | None:
        with self._requests_lock:
            return self._requests.popleft() if self._requests else None

    def handle_actions(self, actions: Sequence[agent_pb2.Action], outbox: Outbox) -> None:
        """Act on actions received in a check-in (see :mod:`agent.actions`)."""
        for action in actions:
            self._actions.handle(action, outbox)

    def run_requested(self) -> int:
        """Execute every queued run request (in order); returns how many ran."""
        count = 0
        while not self._stop.is_set():
            request = self._next_request()
            if request is None:
                break
            if request.expired():
                ActionHandler.notice(
                    self._outbox,
                    f"Action {request.action_id} ({request.kind}) expired while queued behind "
                    "another run; ignored",
                )
                continue
            if request.job is not None:
                self._do_job(request)
            else:
                self.migrate(request=request)
            count += 1
        return count

    def _do_job(self, request: RunRequest) -> None:
        """A spec's run, preview or revert (its own module reports the outcome); an error it
        did not expect is a notice, never the end of the migration worker."""
        assert request.job is not None
        try:
            request.job()
        except Exception as exc:
            log.exception("action %s (%s) failed", request.action_id, request.kind)
            ActionHandler.notice(
                self._outbox,
                f"Action {request.action_id} ({request.kind}) failed: {type(exc).__name__}: {exc}",
            )

    def credentials(self) -> Credentials | None:
        """Stored enrollment credentials, None if not enrolled."""
        return load_credentials(self._config.credentials_path)

    def _trust(self) -> Trust | None:
        """This agent's id and pinned server key, for verifying actions (None: not enrolled
        or the credentials file is unreadable: every action is refused)."""
        try:
            credentials = self.credentials()
        except EnrollmentError:
            return None
        if credentials is None:
            return None
        return Trust(credentials.agent_id, credentials.server_signing_key)

    def facts(self, outbox: Outbox | None = None) -> agent_pb2.HostFacts:
        """Host facts for the next check-in."""
        version = (outbox or self._outbox).get_state(f"config_version:{MIGRATION_ID}")
        facts = host_facts(
            self._config.root,
            self._config.state_dir,
            json_conf(self._config.root),
            version,
            self._config.labels,
        )
        facts.specs.extend(self._spec_facts())
        return facts

    def _client_for(self, credentials: Credentials) -> CheckInClient:
        """The check-in client, using ``credentials`` (the stored ones, read for this cycle: a
        re-enrollment takes effect at the next check-in)."""
        target = self._config.server or credentials.server
        if self._client is not None and self._client.target != target:
            self._client.close()  # re-enrolled with another server
            self._client = None
        if self._client is not None:
            self._client.use(credentials)
        else:
            self._client = CheckInClient(
                target,
                credentials,
                self._config.rpc_timeout,
                ChannelSecurity.from_config(self._config),
                credentials_path=self._config.credentials_path,
            )
            self._schedule.adopt(credentials.checkin_interval)
        return self._client

    def check_in(self, outbox: Outbox | None = None) -> CheckInResult:
        """One check-in cycle (on ``outbox``, a connection of the calling thread; default the
        agent's own); adopts the server's interval. Received actions are in the result."""
        outbox = outbox or self._outbox
        try:
            credentials = self.credentials()
        except EnrollmentError as exc:
            return self._not_enrolled(outbox, str(exc))
        if credentials is None:
            return self._not_enrolled(
                outbox,
                f"not enrolled (no {self._config.credentials_path}): run flagpost-agent enroll",
            )
        client = self._client_for(credentials)
        result = client.cycle(
            outbox,
            self.facts(outbox),
            max_events=self._config.max_events_per_checkin,
            max_bytes=self._config.max_batch_bytes,
            max_chunks=self._config.max_chunks_per_cycle,
            max_log_lines=self._config.max_log_lines_per_checkin,
        )
        self._schedule.adopt(result.next_interval)
        return result

    def _not_enrolled(self, outbox: Outbox, message: str) -> CheckInResult:
        log.error("%s", message)
        outbox.set_state("last_error", message)
        return CheckInResult(ok=False, error=message, code="NOT_ENROLLED", auth_failed=True)

    def once(self) -> int:
        """``flagpost-agent once``: recover, migrate, check in until the outbox is drained
        (retrying retryable failures up to ``retry.once_attempts`` times in a row). 0 on success;
        1 if the check-in failed (the events stay in the outbox)."""
        self.recover()
        self.migrate()
        failures = 0
        rounds = 0
        while not self._stop.is_set():
            result = self.check_in()
            delay = self._schedule.after(result)
            if result.ok:
                failures = 0
                self.handle_actions(result.actions, self._outbox)
                if result.more:
                    continue  # a backlog bigger than one cycle: keep draining
                if rounds < ONCE_ACTION_ROUNDS and (
                    self.run_requested() or self._outbox.runs.pending_action_acks()
                ):
                    rounds += 1
                    continue  # report the requested runs and acknowledge the actions
                return 0
            failures += 1
            if result.auth_failed or failures >= self._config.retry.once_attempts:
                break
            if self._stop.wait(delay.total_seconds()):
                break
        log.error(
            "%s; %d events kept in the outbox",
            result.error or "check-in stopped",
            self._outbox.depth(),
        )
        return 1

    def run(self) -> int:
        """``flagpost-agent run``: the daemon loop until stopped. Returns the exit code."""
        self.recover()
        self._wait_for_input = True  # answers arrive through the check-in thread
        # Before the first check-in: answers sent while the agent was down may arrive before
        # the resumed run asks again (with the same request id).
        waiting = [migration.id for migration in self._registry]
        if self._has_specs():
            waiting.extend(installed.spec_id for installed in self.specs.store.all())
        self._engine.reopen_waiting(waiting)
        try:
            credentials = self.credentials()
        except EnrollmentError:
            credentials = None
        if credentials is not None:
            self._schedule.adopt(credentials.checkin_interval)
        loop = CheckInLoop(
            outbox_path=self._config.outbox_path,
            schedule=self._schedule,
            control=self._control,
            stop=self._stop,
            check_in=self.check_in,
            on_actions=self.handle_actions,
            fast_interval=self._config.fast_checkin_interval,
        )
        loop.start()
        try:
            self.migrate(report_unchanged=True)
            self.resume_waiting_specs()
            next_detection = time.monotonic() + self.interval.total_seconds()
            while not self._stop.is_set():
                self._work.wait(max(0.0, next_detection - time.monotonic()))
                self._work.clear()
                if self._stop.is_set():
                    break
                if self.run_requested():
                    continue
                if time.monotonic() >= next_detection:
                    self.migrate(report_unchanged=False)
                    next_detection = time.monotonic() + self.interval.total_seconds()
        finally:
            self._stop.set()
            loop.join(self._config.rpc_timeout.total_seconds() + 5)
        log.info("agent stopped")
        return 0

    def status(self) -> Status:
        """Outbox depth, quarantine, last check-in and error, agent id, config version."""
        try:
            credentials = self.credentials()
        except EnrollmentError:
            credentials = None
        return Status(
            agent_id=credentials.agent_id if credentials else "",
            server=self._config.server or (credentials.server if credentials else ""),
            config_version=self._outbox.get_state(f"config_version:{MIGRATION_ID}"),
            outbox_depth=self._outbox.depth(),
            quarantined=[
                {
                    "event_id": q.event_id,
                    "reason": q.reason,
                    "summary": q.summary,
                    "created_at": q.created_at,
                }
                for q in self._outbox.quarantined()
            ],
            last_checkin_at=self._outbox.get_state("last_checkin_at"),
            last_error=self._outbox.get_state("last_error"),
            last_error_at=self._outbox.get_state("last_error_at"),
            journal_pending=self._config.journal_path.exists(),
            runs=self._outbox.runs.counts(),
        )
