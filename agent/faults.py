"""Test-only fault injection: a real ``SIGKILL`` of this process at a named point.

``AgentConfig.crash_at`` (env ``FLAGPOST_AGENT_CRASH_AT``) names the point. Points reached by the
migration engine: ``before_backup``, ``after_backup``, ``after_write:<n>`` (after the n-th file
operation of a run, 1-based, a write or a removal), ``after_commit`` (journal says committed, the
outcome is not yet in the outbox) and ``before_journal_clear`` (outcome recorded, journal still
present).
"""

from __future__ import annotations

import logging
import os
import signal


class FaultInjector:
    """Kills the process with SIGKILL when :meth:`reached` is called with the configured point."""

    def __init__(self, crash_at: str = "") -> None:
        self._crash_at = crash_at

    def reached(self, point: str) -> None:
        """Crash now if ``point`` is the configured crash point; otherwise do nothing."""
        if self._crash_at and point == self._crash_at:
            logging.getLogger(__name__).warning("fault injection: SIGKILL at %s", point)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
