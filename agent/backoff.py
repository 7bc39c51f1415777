"""Exponential backoff with full jitter ("Exponential Backoff and Jitter", AWS blog)."""

from __future__ import annotations

import random
from datetime import timedelta

from agent.config import RetrySettings


class Backoff:
    """Delays for consecutive failures: attempt n waits uniform(0, min(max, initial * m**n)).

    A server hint (``retry-after-ms``) is honoured with full jitter too: the delay is the hint
    plus uniform(0, max(hint, ceiling)), so agents told "come back in 2 s" at the same moment
    spread over the following window instead of returning together; never below the hint, capped
    at the maximum. :meth:`reset` after a success starts again from the initial delay.
    """

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last reset."""
        return self._attempt

    def ceiling(self, attempt: int) -> float:
        """Upper bound in seconds of the jittered delay for ``attempt`` (0-based)."""
        initial = self._settings.initial.total_seconds()
        maximum = self._settings.maximum.total_seconds()
        # Cap the exponent so huge attempt counts cannot overflow a float.
        exponent = min(attempt, 64)
        return min(maximum, initial * self._settings.multiplier**exponent)

    def next_delay(self, hint: timedelta | None = None) -> timedelta:
        """The delay before the next retry; counts one more failure."""
        ceiling = self.ceiling(self._attempt)
        self._attempt += 1
        maximum = self._settings.maximum.total_seconds()
        if hint is None:
            return timedelta(seconds=self._rng.uniform(0.0, ceiling))
        floor = min(max(0.0, hint.total_seconds()), maximum)
        delay = floor + self._rng.uniform(0.0, max(floor, ceiling))
        return timedelta(seconds=min(delay, max(maximum, floor)))

    def longest(self) -> timedelta:
        """The maximum delay, for failures retrying soon cannot fix (revoked credential)."""
        self._attempt += 1
        return self._settings.maximum

    def reset(self) -> None:
        """Forget past failures."""
        self._attempt = 0


def jittered(interval: timedelta, rng: random.Random, spread: float = 0.1) -> timedelta:
    """``interval`` scaled by a uniform factor in [1 - spread, 1 + spread] (fleet de-sync)."""
    return interval * rng.uniform(1.0 - spread, 1.0 + spread)
