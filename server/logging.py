"""Process-wide logging setup for ``flagpost-server`` (called once by the CLI).

Nothing the server logs contains a secret: tokens and credentials are never passed to a logger,
and SQL echo (``log_sql``) shows statements with bound parameters hidden.
"""

from __future__ import annotations

import logging
import sys

from server.config import ServerConfig

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
    logging.getLogger("alembic.runtime.migration").setLevel(level)
