"""A per-key sliding-window rate limiter (login attempts, enrollments).

In memory, per process: with several replicas each enforces its own window, so the effective
limit is N x replicas; that bounds guessing without a shared store. A key is typically the client
address, or (address, user name) for logins. Keys with no recent attempts are forgotten, so
memory stays bounded by the number of clients active within one window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from server.errors import RateLimited


class RateLimiter:
    """At most ``limit`` hits per ``window`` seconds for each key (0 disables the limit)."""

    def __init__(
        self,
        name: str,
        limit: int,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.limit = limit
        self.window = window
        self.clock = clock  # monotonic seconds (tests pass their own)
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again (0.0: it may now)."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        hits = self._recent(key, now)
        if len(hits) < self.limit:
            return 0.0
        return max(0.0, hits[0] + self.window - now)

    def hit(self, key: str) -> None:
        """Count one attempt for ``key``; RateLimited (naming the limit and when to retry)
        when the key is over its limit. A refused attempt is not counted."""
        self.check(key)
        self.record(key)

    def check(self, key: str) -> None:
        """RateLimited (naming the limit and when to retry) when ``key`` is over its limit;
        counts nothing (``record`` does: e.g. only failed logins count for an account)."""
        wait = self.retry_after(key)
        if wait > 0:
            raise RateLimited(
                f"too many {self.name} attempts: the limit is {self.limit} per "
                f"{self.window:g} s; retry in {math.ceil(wait)} s",
                retry_after_ms=math.ceil(wait * 1000),
            )

    def record(self, key: str) -> None:
        """Count one attempt for ``key`` (nothing when the limit is off)."""
        if self.limit <= 0:
            return
        now = self.clock()
        self._recent(key, now).append(now)
        self._prune()

    def reset(self, key: str) -> None:
        """Forget ``key``'s attempts (a successful login clears its failures)."""
        self._hits.pop(key, None)

    def _prune(self) -> None:
        if len(self._hits) < 4096:
            return
        now = self.clock()
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]
