"""What an app's live streams share: the limits on how many are open, and the shared readers
(``server.web.history.fanout``, ``server.web.runs.fanout``), created on first use.
``setup_web`` puts one :class:`LiveStreams` into ``app[LIVE]``."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

from server.web.auth import SESSION_TOKEN, session_still_valid
from server.web.history.fanout import HistoryFanout
from server.web.runs.fanout import RunFanouts
from server.web.stream_limits import StreamLimits


@dataclass
class LiveStreams:
    """One app's live-stream state (mutable: the app itself is frozen once started)."""

    limits: StreamLimits
    history: HistoryFanout | None = None
    runs: RunFanouts | None = None
    # session token -> (loop time the answer expires, is the session still valid)
    session_checks: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def subscribers(self) -> int:
        """Streams registered with a shared reader (0 once every stream has ended)."""
        history = len(self.history.subscribers) if self.history is not None else 0
        return history + (self.runs.subscribers() if self.runs is not None else 0)


LIVE = web.AppKey("live_streams", LiveStreams)

log = logging.getLogger(__name__)

# After the last stream closed, give freed memory back to the OS this much later (once).
RELEASE_DELAY_SECONDS = 1.0


# Streams of one session share their heartbeat's session check for this long.
SESSION_CHECK_SECONDS = 2.0


async def session_valid(request: web.Request) -> bool:
    """:func:`server.web.auth.session_still_valid`, asked at most once per
    ``SESSION_CHECK_SECONDS`` per session however many streams it has open."""
    token = request.get(SESSION_TOKEN)
    if token is None:
        return await session_still_valid(request)
    checks = request.app[LIVE].session_checks
    now = asyncio.get_running_loop().time()
    cached = checks.get(token)
    if cached is not None and cached[0] > now:
        return cached[1]
    valid = await session_still_valid(request)
    for stale in [t for t, (until, _) in checks.items() if until <= now]:
        del checks[stale]
    checks[token] = (now + SESSION_CHECK_SECONDS, valid)
    return valid


@contextmanager
def stream_slot(request: web.Request) -> Iterator[None]:
    """One open stream for ``request``'s session, within the limits (TooManyStreams beyond
    them). When the last open stream ends, freed memory is handed back to the OS."""
    limits = request.app[LIVE].limits
    with limits.hold(session_key(request)):
        yield
    if limits.total == 0:
        asyncio.get_running_loop().call_later(RELEASE_DELAY_SECONDS, _release_memory, limits)


def _release_memory(limits: StreamLimits) -> None:
    """Collect, then ask glibc to return free heap pages (many streams' buffers come and go
    together; without this the process keeps its peak RSS). A no-op without glibc."""
    if limits.total:
        return
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
    log.debug("live streams: all closed; freed memory returned")


def session_key(request: web.Request) -> str:
    """What the per-session limit counts by: the web session's token ("" without one)."""
    return request.get(SESSION_TOKEN) or ""


async def stop_readers(app: web.Application) -> None:
    """``on_cleanup`` hook: cancel any shared reader still running."""
    live = app.get(LIVE)
    if live is None:
        return
    for fanout_task in [
        live.history.task if live.history is not None else None,
        *(live.runs.tasks() if live.runs is not None else []),
    ]:
        if fanout_task is not None and not fanout_task.done():
            fanout_task.cancel()
