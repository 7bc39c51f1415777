"""The agent's lifecycle: recover → migrate → check in, once or in a loop.

``Agent`` owns the outbox, the migration engine and the gRPC client. ``run()`` loops until
:meth:`Agent.request_stop` (SIGTERM/SIGINT): the step in progress finishes (a migration stops
between steps and rolls back), then the loop exits; a second signal exits the process at once
(the journal makes that safe). :meth:`Agent.shutdown` is idempotent; ``with Agent(...)`` calls it.

Check-in timing (first one jittered, the server's interval with jitter, backoff with full jitter
and ``retry-after-ms`` after failures) is :class:`agent.schedule.CheckInSchedule`.

Re-detection in ``run``: every check-in interval each registered migration is detected again. A
needed migration is always executed and reported; a ``not_needed`` or ``failed`` detection is
reported at start and then only when its outcome changes (otherwise a healthy fleet would add one
History row per host per minute, and a broken config would repeat the same error forever).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType, TracebackType
from typing import Any

from agent.checkin import CheckInClient, CheckInResult
from agent.config import AgentConfig
from agent.enroll import Credentials, EnrollmentError, load_credentials
from agent.faults import FaultInjector
from agent.migrations.chain import MIGRATION_ID, json_conf
from agent.migrations.engine import MigrationEngine, RunResult
from agent.migrations.registry import MigrationRegistry, default_registry
from agent.outbox import Outbox
from agent.schedule import CheckInSchedule
from agent.sysinfo import host_facts
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)


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
        self._outbox = Outbox(config.outbox_path)
        self._engine = MigrationEngine(
            config.root,
            config.state_dir,
            self._outbox,
            faults=FaultInjector(config.crash_at),
            should_stop=self._stop.is_set,
        )
        self._schedule = CheckInSchedule(
            config.checkin_interval,
            config.retry,
            startup_jitter=config.startup_jitter,
            rng=self._rng,
        )

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Agent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def interval(self) -> timedelta:
        """The current check-in interval (the server may change it)."""
        return self._schedule.interval

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: first one stops gracefully, a second exits at once."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"flagpost-agent: second signal, exiting now\n")
            os._exit(128 + signum)
        log.info("received %s: stopping after the current step", signal.Signals(signum).name)
        self._stop.set()

    # ------------------------------------------------------------ work

    def recover(self) -> agent_pb2.MigrationEvent | None:
        """Resolve a migration journal left by a crash (first thing at start)."""
        return self._engine.recover()

    def migrate(self, *, report_unchanged: bool = True) -> list[RunResult]:
        """Detect (and execute where needed) every registered migration."""
        results = []
        for migration in self._registry:
            if self._stop.is_set():
                break
            results.append(self._engine.run(migration, report_unchanged=report_unchanged))
        return results

    def credentials(self) -> Credentials | None:
        """Stored enrollment credentials, None if not enrolled."""
        return load_credentials(self._config.credentials_path)

    def facts(self) -> agent_pb2.HostFacts:
        """Host facts for the next check-in."""
        version = self._outbox.get_state(f"config_version:{MIGRATION_ID}")
        return host_facts(
            self._config.root, self._config.state_dir, json_conf(self._config.root), version
        )

    def _client_for(self, credentials: Credentials) -> CheckInClient:
        if self._client is None:
            target = self._config.server or credentials.server
            self._client = CheckInClient(target, credentials, self._config.rpc_timeout)
            self._schedule.adopt(credentials.checkin_interval)
        return self._client

    def check_in(self) -> CheckInResult:
        """One check-in cycle; adopts the server's interval."""
        try:
            credentials = self.credentials()
        except EnrollmentError as exc:
            return self._not_enrolled(str(exc))
        if credentials is None:
            return self._not_enrolled(
                f"not enrolled (no {self._config.credentials_path}): run flagpost-agent enroll"
            )
        client = self._client_for(credentials)
        result = client.cycle(
            self._outbox,
            self.facts(),
            max_events=self._config.max_events_per_checkin,
            max_bytes=self._config.max_batch_bytes,
            max_chunks=self._config.max_chunks_per_cycle,
        )
        self._schedule.adopt(result.next_interval)
        return result

    def _not_enrolled(self, message: str) -> CheckInResult:
        log.error("%s", message)
        self._outbox.set_state("last_error", message)
        return CheckInResult(ok=False, error=message, code="NOT_ENROLLED", auth_failed=True)

    def once(self) -> int:
        """``flagpost-agent once``: recover, migrate, check in until the outbox is drained
        (retrying retryable failures up to ``retry.once_attempts`` times in a row). 0 on success;
        1 if the check-in failed (the events stay in the outbox)."""
        self.recover()
        self.migrate()
        failures = 0
        while not self._stop.is_set():
            result = self.check_in()
            delay = self._schedule.after(result)
            if result.ok:
                failures = 0
                if result.more:
                    continue  # a backlog bigger than one cycle: keep draining
                return 0
            failures += 1
            if result.auth_failed or failures >= self._config.retry.once_attempts:
                break
            if self._stop.wait(delay.total_seconds()):
                break
        log.error("check-in failed; %d events kept in the outbox", self._outbox.depth())
        return 1

    def run(self) -> int:
        """``flagpost-agent run``: the daemon loop until stopped. Returns the exit code."""
        self.recover()
        self.migrate(report_unchanged=True)
        try:
            credentials = self.credentials()
        except EnrollmentError:
            credentials = None
        if credentials is not None:
            self._schedule.adopt(credentials.checkin_interval)
        next_detection = time.monotonic() + self.interval.total_seconds()
        delay = self._schedule.first_delay()
        while True:
            log.debug("next check-in in %.1fs", delay.total_seconds())
            if self._stop.wait(delay.total_seconds()):
                break
            result = self.check_in()
            delay = self._schedule.after(result)
            if time.monotonic() >= next_detection and not self._stop.is_set():
                self.migrate(report_unchanged=False)
                next_detection = time.monotonic() + self.interval.total_seconds()
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
        )
