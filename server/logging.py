"""Process-wide logging setup for ``flagpost-server`` (called once by the CLI).

Nothing the server logs contains a secret: tokens and credentials are never passed to a logger,
and SQL echo (``log_sql``) shows statements with bound parameters hidden.

Below DEBUG, two kinds of noise are trimmed: alembic's per-connection announcements ("Context
impl SQLiteImpl.") and aiohttp's traceback for a request it cannot parse (a client that is not
speaking HTTP/1.1 to the web port, typically an agent given the web port as its gRPC address).
The latter becomes one warning line; ``log_level = "DEBUG"`` (``--debug``) keeps the traceback.
Also below DEBUG: when aiosqlite cannot open a database file it reports the closed connection
from its worker thread after ``asyncio.run`` may already have closed the loop; that thread's
"Event loop is closed" traceback (the connection is gone either way) is not printed.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

from server.config import ServerConfig

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
HTTP2_PREFACE_MARKERS = ("PRI", "HTTP/2")


class BadRequestFilter(logging.Filter):
    """On ``aiohttp.server``: a request aiohttp could not parse is logged as one WARNING line
    naming the client (and, for the HTTP/2 preface gRPC sends, the gRPC port) instead of an
    ERROR with a traceback of the parser and the raw bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        text = str(exc.message).strip()
        if any(marker in text for marker in HTTP2_PREFACE_MARKERS):
            detail = (
                "it speaks HTTP/2, probably an agent given the web port as its server address; "
                "agents use the gRPC port (grpc_port, by default 50051)"
            )
        else:
            detail = (text.splitlines()[0] if text else "malformed request").rstrip(":")
        record.msg = "refused a request on the web port from %s that is not HTTP/1.1: %s"
        record.args = (remote, detail)
        record.exc_info = None
        record.exc_text = None
        record.levelno = logging.WARNING
        record.levelname = logging.getLevelName(logging.WARNING)
        return True


class AlembicChatterFilter(logging.Filter):
    """On ``alembic.runtime.migration``: drop the two lines alembic logs on every connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("Context impl", "Will assume"))


def _from_aiosqlite_worker(exc: BaseException | None) -> bool:
    """True for the "Event loop is closed" RuntimeError raised in aiosqlite's worker thread."""
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_connection_worker_thread" and "aiosqlite" in code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _quiet_thread_hook(
    previous: Callable[[threading.ExceptHookArgs], object],
) -> Callable[[threading.ExceptHookArgs], None]:
    def hook(args: threading.ExceptHookArgs) -> None:
        if not _from_aiosqlite_worker(args.exc_value):
            previous(args)

    hook.flagpost_quiet = True  # type: ignore[attr-defined]
    return hook


def setup_logging(config: ServerConfig) -> None:
    """Log to stderr at ``config.log_level``; SQL statements too when ``config.log_sql``."""
    level = logging.getLevelNamesMapping().get(config.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("sqlalchemy.engine").setLevel(
        logging.INFO if config.log_sql else logging.WARNING
    )
    for noisy in ("aiosqlite", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # alembic announces every plugin it sets up; keep only "Running upgrade ..." lines.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(level, logging.WARNING))
    migration = logging.getLogger("alembic.runtime.migration")
    migration.setLevel(level)
    aiohttp_server = logging.getLogger("aiohttp.server")
    for logger, kind in ((migration, AlembicChatterFilter), (aiohttp_server, BadRequestFilter)):
        for old in [f for f in logger.filters if isinstance(f, kind)]:
            logger.removeFilter(old)
        if level > logging.DEBUG:
            logger.addFilter(kind())
    if level > logging.DEBUG and not getattr(threading.excepthook, "flagpost_quiet", False):
        threading.excepthook = _quiet_thread_hook(threading.excepthook)
