"""What an app's live streams share: the limits on how many are open, and the shared readers
(``server.web.history.fanout``, ``server.web.runs.fanout``), created on first use.
``setup_web`` puts one :class:`LiveStreams` into ``app[LIVE]``."""

from __future__ import annotations

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
