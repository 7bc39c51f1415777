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
from dataclasses import dataclass

from aiohttp import web

from server.web.auth import SESSION_TOKEN
from server.web.history.fanout import HistoryFanout
from server.web.runs.fanout import RunFanouts
from server.web.stream_limits import StreamLimits


@dataclass
class LiveStreams:
    """One app's live-stream state (mutable: the app itself is frozen once started)."""

    limits: StreamLimits
    history: HistoryFanout | None = None
    runs: RunFanouts | None = None

    def subscribers(self) -> int:
        """Streams registered with a shared reader (0 once every stream has ended)."""
        history = len(self.history.subscribers) if self.history is not None else 0
        return history + (self.runs.subscribers() if self.runs is not None else 0)


LIVE = web.AppKey("live_streams", LiveStreams)

log = logging.getLogger(__name__)

# After the last stream closed, give freed memory back to the OS this much later (once).
RELEASE_DELAY_SECONDS = 1.0


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
