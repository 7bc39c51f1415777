"""The daemon's check-in thread: reports while migrations run on the main thread.

Migrations run in the agent's main thread and can take long (a step may wait on a slow disk, or
the test/demo step delay); check-ins run here, on their own thread with their own outbox
connection (SQLite WAL: the engine writes while this thread reads and deletes acknowledged
rows), so log lines and run updates reach the server during a step, not after it.

Cadence:

* the first check-in waits for the startup jitter (a fleet booting at once must not arrive at
  once, even if every host starts a migration);
* while a run is live (in progress, or ended less than ``fast_checkin_linger`` ago) the next
  check-in is due ``fast_checkin_interval`` (≤ 1 s) after the previous one, and a run starting or
  ending wakes the loop at once;
* otherwise :class:`agent.schedule.CheckInSchedule` decides (interval with ±10 % jitter, backoff
  with full jitter after failures; failures are never hurried by the fast cadence).

Actions received are handed to ``on_actions`` (on this thread: a cancel reaches the running
migration immediately). The loop survives unexpected errors (logged, then backoff).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from agent.checkin import CheckInResult
from agent.outbox import Outbox
from agent.runs import RunControl
from agent.schedule import CheckInSchedule
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)

# Longest single wait: bounds how late the loop notices a stop request.
_TICK = 0.25


class CheckInLoop:
    """A thread that checks in until ``stop`` is set. :meth:`start`, then :meth:`join`."""

    def __init__(
        self,
        *,
        outbox_path: Path,
        schedule: CheckInSchedule,
        control: RunControl,
        stop: threading.Event,
        check_in: Callable[[Outbox], CheckInResult],
        on_actions: Callable[[Sequence[agent_pb2.Action], Outbox], None],
        fast_interval: timedelta,
    ) -> None:
        self._outbox_path = outbox_path
        self._schedule = schedule
        self._control = control
        self._stop = stop
        self._check_in = check_in
        self._on_actions = on_actions
        self._fast = fast_interval.total_seconds()
        self._thread = threading.Thread(target=self._main, name="flagpost-checkin", daemon=True)
        self._last_attempt = 0.0
        self._last_ok = False
        self.checkins = 0  # attempts so far (status and tests)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (call after setting ``stop``)."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        with Outbox(self._outbox_path) as outbox:
            due = time.monotonic() + self._schedule.first_delay().total_seconds()
            while not self._wait_until(due):
                self._last_attempt = time.monotonic()
                self.checkins += 1
                try:
                    result = self._check_in(outbox)
                    if result.actions:
                        self._on_actions(result.actions, outbox)
                except Exception:
                    log.exception("check-in loop: unexpected error; backing off")
                    result = CheckInResult(ok=False, error="unexpected error", code="INTERNAL")
                self._last_ok = result.ok
                due = time.monotonic() + self._schedule.after(result).total_seconds()
        log.debug("check-in loop stopped")

    def _wait_until(self, due: float) -> bool:
        """Sleep until ``due`` (earlier while a run is live); True if stopping."""
        while not self._stop.is_set():
            now = time.monotonic()
            hurry = self._control.hurry_interval(self._fast) if self._last_ok else None
            if hurry is not None:
                due = min(due, self._last_attempt + hurry)
            if now >= due:
                return False
            if self._control.wake.wait(min(due - now, _TICK)):
                self._control.wake.clear()
        return True
