"""How many live streams (History and run streams together) may be open: per web session
(``max_streams_per_session``) and in all (``max_streams_total``). A stream beyond either is
refused before any byte is sent: :class:`server.errors.TooManyStreams`, 429 with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from server.config import ServerConfig
from server.errors import TooManyStreams

# A refused client retries after this long (an open stream usually closes with a page).
RETRY_AFTER_MS = 5_000


class StreamLimits:
    """Open streams per session key and in total (one per app, in memory)."""

    def __init__(self, per_session: int, total: int) -> None:
        self.per_session = per_session
        self.total_limit = total
        self.total = 0
        self._by_session: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: ServerConfig) -> StreamLimits:
        return cls(config.max_streams_per_session, config.max_streams_total)

    def open_for(self, session_key: str) -> int:
        """Streams open for ``session_key``."""
        return self._by_session.get(session_key, 0)

    @contextmanager
    def hold(self, session_key: str) -> Iterator[None]:
        """One stream of ``session_key`` for the duration of the block; TooManyStreams when a
        limit is reached."""
        held = self._by_session.get(session_key, 0)
        if held >= self.per_session:
            raise TooManyStreams(
                f"this session already has {held} live streams open (max_streams_per_session "
                f"= {self.per_session}); close a History or run page, then retry",
                retry_after_ms=RETRY_AFTER_MS,
            )
        if self.total >= self.total_limit:
            raise TooManyStreams(
                f"the server has {self.total} live streams open (max_streams_total = "
                f"{self.total_limit}); retry later",
                retry_after_ms=RETRY_AFTER_MS,
            )
        self._by_session[session_key] = held + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            left = self._by_session[session_key] - 1
            if left:
                self._by_session[session_key] = left
            else:
                del self._by_session[session_key]


STREAM_LIMITS = web.AppKey("stream_limits", StreamLimits)
