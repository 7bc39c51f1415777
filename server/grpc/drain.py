"""Graceful gRPC shutdown that answers every call that reached the server.

``grpc.aio.Server.stop(grace)`` lets the calls its handlers already run finish, but a call that
reached the server and was not yet handed to a handler (a backlog forms whenever many agents
check in at once) is ended by gRPC core with CANCELLED (grpc/grpc#41785) — a status an agent
cannot tell from its own cancellation. So the server drains first (``Drain``):

1. ``begin()``: from now on every call but the health checks is answered at once with
   UNAVAILABLE ("the server is shutting down"), which agents retry; calls already inside a
   handler carry on (a check-in waiting for its batch is committed and answered). The health
   service turns NOT_SERVING (the ``on_begin`` callbacks), so load balancers move away.
2. ``settle()``: wait until no call has arrived for ``QUIET_SECONDS`` (the backlog has been
   handed out and answered), at most the given limit; at once when none arrived that recently.
3. Only then ``server.stop(grace)``: what is still in a handler gets the rest of the grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from server.errors import Unavailable

log = logging.getLogger(__name__)

QUIET_SECONDS = 0.25  # no new call for this long: the backlog is empty
POLL_SECONDS = 0.05

BeginCallback = Callable[[], Awaitable[None]]


class Drain:
    """Counts the calls that reach the handlers; refuses new work once ``begin()`` ran."""

    def __init__(self, always_served: frozenset[str] = frozenset()) -> None:
        """``always_served``: methods answered normally while draining (the health checks)."""
        self._always_served = always_served
        self._on_begin: list[BeginCallback] = []
        self.draining = False
        self.refused = 0  # calls answered UNAVAILABLE while draining
        self._last_arrival = time.monotonic()

    def on_begin(self, callback: BeginCallback) -> None:
        """Await ``callback()`` when draining begins (e.g. health -> NOT_SERVING)."""
        self._on_begin.append(callback)

    def admit(self, method: str) -> None:
        """Called as a call reaches its handler: raise Unavailable while draining (unless
        ``method`` is always served)."""
        self._last_arrival = time.monotonic()
        if self.draining and method not in self._always_served:
            self.refused += 1
            raise Unavailable("the server is shutting down; retry shortly")

    async def begin(self) -> None:
        """Start refusing new work (idempotent)."""
        if self.draining:
            return
        self.draining = True
        for callback in self._on_begin:
            try:
                await callback()
            except Exception:
                log.exception("drain callback failed")

    async def settle(self, limit_seconds: float) -> float:
        """Wait until no call arrived for ``QUIET_SECONDS`` or ``limit_seconds`` passed;
        return the seconds waited."""
        started = time.monotonic()
        deadline = started + max(0.0, limit_seconds)
        while True:
            now = time.monotonic()
            if now - self._last_arrival >= QUIET_SECONDS or now >= deadline:
                return now - started
            await asyncio.sleep(POLL_SECONDS)
