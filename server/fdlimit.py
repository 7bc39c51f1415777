"""The process's open-files limit (``RLIMIT_NOFILE``) and the share of it the web may use.

Every socket and file is a descriptor: the web's connections, gRPC's (one long-lived connection
per agent), the database's (a pool of up to twice ``database_pool_size`` connections; on SQLite
each holds the database, its ``-wal`` and its ``-shm``), the log and the interpreter's own. When
they run out, the database and gRPC fail with the web. So:

- ``flagpost-server serve`` raises its soft limit to the hard limit (``raise_soft_limit``),
  as systemd expects of a service that needs more than the 1,024 it grants by default (the
  unit's ``LimitNOFILE`` sets both);
- the web may hold at most the soft limit minus ``FD_RESERVE`` connections
  (``web_connection_cap``); ``server.web.listener`` lowers ``web_max_connections`` to that.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Descriptors the web's connections never take: the database pool (20 connections, 3
# descriptors each on SQLite), the listeners, gRPC's own and a couple of hundred agents' gRPC
# connections under a 1,024 limit, the log, the interpreter's imports and certificates.
FD_RESERVE = 256
# Never raise the soft limit above this (a hard limit of "infinity" cannot be the soft one).
MAX_SOFT_LIMIT = 1 << 20


def soft_limit() -> int | None:
    """The soft open-files limit; None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_soft_limit() -> int | None:
    """Raise the soft open-files limit to the hard one (at most ``MAX_SOFT_LIMIT``); returns the
    soft limit in force afterwards (None: unlimited). A refusal leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_SOFT_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_SOFT_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        else:
            log.info("open-files limit raised from %d to %d (the hard limit)", soft, target)
    return soft_limit()


def web_connection_cap(configured: int, limit: int | None) -> int:
    """``configured`` (``web_max_connections``), or less when the open-files ``limit`` minus
    ``FD_RESERVE`` is below it (at least 1)."""
    if limit is None:
        return configured
    return max(1, min(configured, limit - FD_RESERVE))
