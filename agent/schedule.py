"""When the agent checks in next: the policy shared by the daemon and the fleet simulator.

* First check-in after start: uniform(0, min(startup_jitter, interval)), so a fleet that boots at
  once (power back in a data centre) does not arrive at once.
* After a successful cycle: the server's ``next_checkin_seconds`` (adopted as the interval),
  scaled by a uniform factor in [0.9, 1.1]. A cycle that stopped at its request bound with events
  left goes again after a short jittered pause instead of a whole interval.
* After a retryable failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...): exponential
  backoff with full jitter (:class:`agent.backoff.Backoff`), honouring ``retry-after-ms``.
* After an authentication failure (UNAUTHENTICATED, PERMISSION_DENIED, not enrolled): the longest
  delay; retrying soon cannot fix it.
"""

from __future__ import annotations

import random
from datetime import timedelta

from agent.backoff import Backoff, jittered
from agent.checkin import CheckInResult
from agent.config import RetrySettings

# Pause before the next cycle when the last one left a backlog (it hit its request bound).
BACKLOG_PAUSE = timedelta(seconds=1)


class CheckInSchedule:
    """Computes the delay before each check-in from the outcome of the previous one."""

    def __init__(
        self,
        interval: timedelta,
        retry: RetrySettings,
        *,
        startup_jitter: timedelta,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self._interval = interval
        self._startup_jitter = startup_jitter
        self._backoff = Backoff(retry, self._rng)

    @property
    def interval(self) -> timedelta:
        """The current check-in interval (the server may change it)."""
        return self._interval

    @property
    def failures(self) -> int:
        """Consecutive failed cycles."""
        return self._backoff.attempt

    def adopt(self, interval: timedelta | None) -> None:
        """Take the server's interval (ignored when None or not positive)."""
        if interval is not None and interval > timedelta(0):
            self._interval = interval

    def first_delay(self) -> timedelta:
        """Delay of the first check-in after start."""
        window = min(self._startup_jitter, self._interval).total_seconds()
        return timedelta(seconds=self._rng.uniform(0.0, max(0.0, window)))

    def after(self, result: CheckInResult) -> timedelta:
        """Delay before the next check-in, given the outcome of the last cycle."""
        if result.ok:
            self._backoff.reset()
            self.adopt(result.next_interval)
            if result.more:
                return jittered(min(BACKLOG_PAUSE, self._interval), self._rng)
            return jittered(self._interval, self._rng)
        if result.auth_failed:
            return self._backoff.longest()
        return self._backoff.next_delay(result.retry_after)
