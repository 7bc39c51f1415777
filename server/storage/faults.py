"""Why the database failed: the one place that reads driver error codes and messages.

``classify(exc)`` names the cause of a database failure with a ``DbFault``, from SQLite's result
codes (``sqlite3.Error.sqlite_errorcode``) and messages, PostgreSQL's SQLSTATE (asyncpg's
``sqlstate``, SQLAlchemy's ``pgcode``) and OS errors. Health (``server.services.health``), its
log lines, ``/healthz`` and the metrics show only the fault's name: never a driver message, which
may carry a URL with its password.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from enum import StrEnum

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class DbFault(StrEnum):
    """A database failure's cause, as operators read it."""

    DISK_FULL = "disk full"
    READ_ONLY = "read-only"
    LOCKED = "locked"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    OTHER = "other"

    @property
    def unwritable(self) -> bool:
        """The database answers but cannot store anything: only a successful write clears it."""
        return self in (DbFault.DISK_FULL, DbFault.READ_ONLY)


# SQLite primary result codes (the low byte of an extended code).
_SQLITE_CODES = {
    5: DbFault.LOCKED,  # SQLITE_BUSY
    6: DbFault.LOCKED,  # SQLITE_LOCKED
    8: DbFault.READ_ONLY,  # SQLITE_READONLY
    13: DbFault.DISK_FULL,  # SQLITE_FULL
    14: DbFault.UNREACHABLE,  # SQLITE_CANTOPEN
}
# PostgreSQL SQLSTATEs, exact codes first, then classes (their first two characters).
_SQLSTATES = {
    "25006": DbFault.READ_ONLY,  # read_only_sql_transaction
    "53100": DbFault.DISK_FULL,  # disk_full
    "55P03": DbFault.LOCKED,  # lock_not_available
    "40P01": DbFault.LOCKED,  # deadlock_detected
    "57014": DbFault.TIMEOUT,  # query_canceled (statement_timeout)
    "57P01": DbFault.UNREACHABLE,  # admin_shutdown
    "57P02": DbFault.UNREACHABLE,  # crash_shutdown
    "57P03": DbFault.UNREACHABLE,  # cannot_connect_now
    "3D000": DbFault.UNREACHABLE,  # invalid_catalog_name (no such database)
    "53300": DbFault.UNREACHABLE,  # too_many_connections
}
_SQLSTATE_CLASSES = {
    "08": DbFault.UNREACHABLE,  # connection_exception
    "28": DbFault.UNREACHABLE,  # invalid_authorization_specification
}
_ERRNOS = {
    errno.ENOSPC: DbFault.DISK_FULL,
    errno.EDQUOT: DbFault.DISK_FULL,
    errno.EROFS: DbFault.READ_ONLY,
}
# Lower-case message fragments, for errors that carry no code.
_MESSAGES = (
    ("database or disk is full", DbFault.DISK_FULL),
    ("no space left on device", DbFault.DISK_FULL),
    ("disk full", DbFault.DISK_FULL),
    ("readonly database", DbFault.READ_ONLY),
    ("read-only", DbFault.READ_ONLY),
    ("read only", DbFault.READ_ONLY),
    ("database is locked", DbFault.LOCKED),
    ("database table is locked", DbFault.LOCKED),
    ("unable to open database file", DbFault.UNREACHABLE),
    ("connection refused", DbFault.UNREACHABLE),
    ("connection was closed", DbFault.UNREACHABLE),
    ("timed out", DbFault.TIMEOUT),
    ("timeout", DbFault.TIMEOUT),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the DBAPI error SQLAlchemy wraps, and their causes (each once, at most 8)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 8:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, DBAPIError) and isinstance(current.orig, BaseException):
            todo.append(current.orig)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def _by_code(exc: BaseException) -> DbFault | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return _SQLITE_CODES.get(code & 0xFF)
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(state, str) and len(state) == 5:
        return _SQLSTATES.get(state) or _SQLSTATE_CLASSES.get(state[:2])
    if isinstance(exc, TimeoutError | PoolTimeout):
        return DbFault.TIMEOUT
    if isinstance(exc, OSError):
        if exc.errno in _ERRNOS:
            return _ERRNOS[exc.errno]
        if isinstance(exc, ConnectionError | socket.gaierror) or exc.errno in (
            errno.EHOSTUNREACH,
            errno.ENETUNREACH,
        ):
            return DbFault.UNREACHABLE
    return None


def classify(exc: BaseException) -> DbFault:
    """The cause of the database failure ``exc`` (``OTHER`` when nothing says)."""
    chain = list(_chain(exc))
    for current in chain:
        fault = _by_code(current)
        if fault is not None:
            return fault
    for current in chain:
        text = str(current).lower()
        for fragment, fault in _MESSAGES:
            if fragment in text:
                return fault
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return DbFault.UNREACHABLE
    if any(isinstance(current, OSError) for current in chain):
        return DbFault.UNREACHABLE  # a driver's OSError is a failure to connect
    return DbFault.OTHER
