"""The per-run logger: log lines of one migration run, stored in the outbox and sent to the server.

Migration code logs through a :class:`RunLog` bound to the run: each line records its ``source``
(``"detector"``, ``"executor"`` or the step's name), level, message and structured metadata (a
string map). Lines are stored durably (see :mod:`agent.run_queue`) with a per-run gap-free seq
from 1 and also mirrored to the process's stderr log.

Detection happens before the agent knows whether the attempt becomes a run (an automatic
``not_needed`` detection is no run, see :mod:`agent.runs`), so a ``RunLog`` starts *buffered*:
lines are kept in memory until :meth:`RunLog.attach` stores them (and every later line) in the
outbox, or dropped if the attempt turns out to be no run.

User migrations log without any plumbing: inside a step's ``plan`` (and ``detect``/``verify``)
:func:`current` returns the logger of the run in progress, bound to the current source (a
logger that only mirrors to stderr outside a run)::

    from agent import runlog
    runlog.current().info("renaming keys", renamed="3")

Secrets never reach a line: metadata whose key looks secret (token, secret, password,
credential, key) is replaced by ``***``; messages are written by our code, which never puts a
value of the config in them. Messages are cut to :data:`MAX_MESSAGE_CHARS`, metadata to
:data:`MAX_METADATA_ITEMS` entries of :data:`MAX_METADATA_VALUE_CHARS`.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

from agent.run_queue import RunQueue
from flagpost.v1 import agent_pb2

DEBUG, INFO, WARNING, ERROR = "DEBUG", "INFO", "WARNING", "ERROR"
LEVELS = {DEBUG: logging.DEBUG, INFO: logging.INFO, WARNING: logging.WARNING, ERROR: logging.ERROR}
MAX_MESSAGE_CHARS = 4000
MAX_METADATA_ITEMS = 32
MAX_METADATA_VALUE_CHARS = 1000
_SECRET_KEY = re.compile(r"token|secret|passw|credential|private|(^|_)key$", re.IGNORECASE)

_mirror = logging.getLogger("agent.run")


def redact(metadata: Mapping[str, object]) -> dict[str, str]:
    """Metadata as strings, secret-looking keys masked, bounded in count and size."""
    clean: dict[str, str] = {}
    for key, value in list(metadata.items())[:MAX_METADATA_ITEMS]:
        text = "***" if _SECRET_KEY.search(key) else str(value)
        clean[str(key)[:100]] = text[:MAX_METADATA_VALUE_CHARS]
    return clean


def _mirror_line(line: agent_pb2.LogLine) -> None:
    """Echo a run's line on the agent's stderr log (secrets were redacted from its metadata)."""
    level = LEVELS[line.level]
    if _mirror.isEnabledFor(level):
        extra = " ".join(f"{k}={v}" for k, v in line.metadata.items())
        _mirror.log(
            level,
            "[run %s] %s: %s%s",
            line.run_id[-12:],
            line.source,
            line.message,
            f" ({extra})" if extra else "",
        )


class RunLog:
    """Log lines of one run; buffered until :meth:`attach`, durable afterwards. A line reaches
    stderr when it becomes part of a run (at :meth:`attach`, or at once when attached)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._queue: RunQueue | None = None
        self._buffer: list[agent_pb2.LogLine] = []
        self._count = 0

    @property
    def attached(self) -> bool:
        return self._queue is not None

    @property
    def count(self) -> int:
        """Lines logged through this object (buffered or stored)."""
        return self._count

    def attach(self, queue: RunQueue) -> None:
        """The attempt is a run: store the buffered lines, in order, and every later line."""
        self._queue = queue
        buffered, self._buffer = self._buffer, []
        for line in buffered:
            _mirror_line(line)
            queue.add_line(line)

    def discard(self) -> None:
        """The attempt is no run: drop the buffered lines (and never print them: a daemon that
        re-detects an unchanged state every interval stays quiet)."""
        self._buffer.clear()

    def log(self, level: str, source: str, message: str, **metadata: object) -> None:
        """Record one line (and mirror it to the stderr log)."""
        line = agent_pb2.LogLine(
            run_id=self.run_id,
            level=level,
            source=source,
            message=message[:MAX_MESSAGE_CHARS],
        )
        line.timestamp.FromDatetime(datetime.now(UTC))
        clean = redact(metadata)
        line.metadata.update(clean)
        self._count += 1
        if self._queue is None:
            self._buffer.append(line)
        else:
            _mirror_line(line)
            self._queue.add_line(line)

    def source(self, source: str) -> SourceLog:
        """A logger for this run bound to ``source``."""
        return SourceLog(self, source)


class SourceLog:
    """A :class:`RunLog` bound to one source; ``None`` run: mirror to stderr only."""

    def __init__(self, run: RunLog | None, source: str) -> None:
        self._run = run
        self.source = source

    def log(self, level: str, message: str, **metadata: object) -> None:
        if self._run is not None:
            self._run.log(level, self.source, message, **metadata)
        elif _mirror.isEnabledFor(LEVELS[level]):
            _mirror.log(LEVELS[level], "%s: %s", self.source, message)

    def debug(self, message: str, **metadata: object) -> None:
        self.log(DEBUG, message, **metadata)

    def info(self, message: str, **metadata: object) -> None:
        self.log(INFO, message, **metadata)

    def warning(self, message: str, **metadata: object) -> None:
        self.log(WARNING, message, **metadata)

    def error(self, message: str, **metadata: object) -> None:
        self.log(ERROR, message, **metadata)


_current: contextvars.ContextVar[SourceLog | None] = contextvars.ContextVar(
    "flagpost_run_log", default=None
)


def current() -> SourceLog:
    """The logger of the run in progress, bound to the current source (see module docstring)."""
    found = _current.get()
    return found if found is not None else SourceLog(None, "agent")


@contextmanager
def bound(run: RunLog | None, source: str) -> Iterator[SourceLog]:
    """Make ``run`` bound to ``source`` the :func:`current` logger inside the block."""
    logger = SourceLog(run, source)
    token = _current.set(logger)
    try:
        yield logger
    finally:
        _current.reset(token)
