"""What went wrong, in words a person can act on: an unreachable server, an unusable state
directory.

The check-in client and enrollment call :func:`unreachable_reason` when gRPC reports
UNAVAILABLE: gRPC's own text ("failed to connect to all addresses; last error: ...") does not say
what to do, so the address is probed with a plain TCP connection to recover the OS reason, and a
server that answers HTTP/1.1 (the web port) is named as such. :func:`ensure_state_dir` and
:class:`StateDirError` name the path, the OS reason and the settings that move it.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from agent.errors import AgentError

DEFAULT_GRPC_PORT = 50051
_PROBE_TIMEOUT_S = 2.0
_HTTP1_MARKERS = ("http1.x", "Failed parsing HTTP/2")
_STATE_HINT = (
    "choose a writable --root, or set state_dir (config state_dir, env "
    "FLAGPOST_AGENT_STATE_DIR) to a writable directory"
)


class StateDirError(AgentError):
    """The agent's state directory (outbox, credentials, journal, backups) cannot be used."""


def os_reason(exc: BaseException, path: Path) -> str:
    """The OS's reason behind ``exc`` for ``path``: ``<file>: <strerror>`` for an OSError, else
    what the OS says about ``path`` itself (SQLite's "unable to open database file" names
    neither the file nor the reason)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename or path}: {exc.strerror}"
    return path_problem(path) or f"{path}: {exc}"


def path_problem(path: Path) -> str:
    """Why ``path`` (a file) cannot be opened for writing or created, as the OS says it: the
    first missing, non-directory, read-only or unwritable component ("" if none is found)."""
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR))
            return ""
        directory = path.parent
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        if not directory.is_dir():
            return f"{directory}: {os.strerror(errno.ENOTDIR)}"
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"{directory}: {os.strerror(errno.EROFS)}"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{directory}: {os.strerror(errno.EACCES)}"
    except OSError as exc:
        return f"{exc.filename or path}: {exc.strerror or exc}"
    return ""


def state_dir_error(state_dir: Path, path: Path, exc: BaseException) -> StateDirError:
    """StateDirError for ``exc``, raised while creating or opening ``path`` in ``state_dir``."""
    return StateDirError(
        f"cannot use the agent state directory {state_dir}: {os_reason(exc, path)}; " + _STATE_HINT
    )


def ensure_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` (0700) and prove a file can be created in it; StateDirError
    otherwise."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as exc:
        raise state_dir_error(state_dir, state_dir / "outbox.db", exc) from exc


def _split(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def unreachable_reason(target: str, details: str) -> str:
    """An UNAVAILABLE failure to reach ``target`` explained: the server answers HTTP/1.1 (the
    web port), or the OS's reason the address cannot be reached (probed with one TCP
    connection); ``details`` (gRPC's text) when the address accepts connections."""
    if any(marker in details for marker in _HTTP1_MARKERS):
        return (
            f"{target} answers HTTP/1.1, not gRPC: is it the web port? gRPC listens on the "
            f"server's grpc_port, by default {DEFAULT_GRPC_PORT} (give --server HOST:PORT)"
        )
    address = _split(target)
    if address is None:
        return details
    try:
        with socket.create_connection(address, timeout=_PROBE_TIMEOUT_S):
            return details
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return (
        f"cannot reach the server at {target}: {reason}; is `flagpost-server serve` running, "
        f"and is this its gRPC address (--server HOST:PORT, gRPC port {DEFAULT_GRPC_PORT} by "
        "default)?"
    )
