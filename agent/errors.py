"""The root of the agent's exceptions, and how any exception becomes an event's error detail.

Every exception class the agent defines derives from :class:`AgentError`. The base carries what
the two mappings need, so each is made in one place:

* ``exit_code``: what ``flagpost-agent`` exits with when such an error ends a command (1: the
  operation failed; 2: usage or configuration error);
* :meth:`AgentError.error_info`: the structured detail a ``MigrationEvent`` reports about the
  error (exception type, errno, file, line); :func:`error_info` extends it to any exception
  (``OSError`` gives its errno and file name).
"""

from __future__ import annotations

import errno as errno_module
from pathlib import Path
from typing import ClassVar

from agent.events import ErrorInfo

EXIT_FAILED = 1
EXIT_USAGE = 2


class AgentError(Exception):
    """An error the agent raises on purpose.

    Subclasses may set ``errno``, ``path``, ``line`` and ``exception_type`` (the name the event
    reports; "" means the class name) on the instance; the defaults say "none"."""

    exit_code: ClassVar[int] = EXIT_FAILED
    errno: int = 0
    path: Path | None = None
    line: int = 0
    exception_type: str = ""

    @property
    def errno_name(self) -> str:
        """``ENOENT`` for errno 2; "" without an errno."""
        return errno_module.errorcode.get(self.errno, "") if self.errno else ""

    def error_info(self) -> ErrorInfo:
        """What an event's error detail says about this error (the caller adds the step,
        the rollback outcome and the backup)."""
        return ErrorInfo(
            file_path=str(self.path) if self.path else "",
            errno=self.errno,
            exception_type=self.exception_type or type(self).__name__,
            line=self.line,
        )


def error_info(exc: BaseException) -> ErrorInfo:
    """The error detail of any exception: an :class:`AgentError` describes itself, an
    ``OSError`` gives its errno and file name, anything else its type name."""
    if isinstance(exc, AgentError):
        return exc.error_info()
    if isinstance(exc, OSError):
        return ErrorInfo(
            file_path=str(Path(str(exc.filename))) if exc.filename else "",
            errno=exc.errno or 0,
            exception_type=type(exc).__name__,
        )
    return ErrorInfo(exception_type=type(exc).__name__)
