"""Actions from the server: what each one means to the agent, and the notices for refusals.

A check-in response may carry actions. Every received action id is recorded in the outbox (see
:mod:`agent.run_queue`) and acknowledged in the next check-in, whatever happens to it; an action
is executed at most once (a re-delivered id is acknowledged again, not executed again; an agent
killed between receiving and executing an action does not execute it after the restart).

* ``run_migration`` (params: ``migration_id``, optional; none means every registered
  migration): queued for the migration worker, which starts a run whose RunUpdates carry
  ``requested_by_action_id``. Such a run is always reported, even when nothing is needed.
* ``cancel_run`` (params: ``run_id``): the run in progress stops at its next step boundary,
  rolls back every applied step and ends CANCELLED (PARTIAL if the rollback failed); its
  execution event is ``migration_execution_failed`` with ``exception_type`` "RunCancelled" and a
  message saying it was cancelled. A cancel for a run that is not in progress (finished, or
  unknown here) is refused with a notice.
* An expired action (``expires_at`` set and not in the future by the agent's clock) or one of an
  unknown kind is ignored and reported as an ``agent_notice`` warning event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from agent import events
from agent.outbox import Outbox
from agent.runs import RunControl
from agent.sysinfo import agent_info
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)

RUN_MIGRATION = "run_migration"
CANCEL_RUN = "cancel_run"


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run the server asked for: ``migration_id`` "" means every registered migration.
    ``expires_at``: the action's expiry; a request still queued then is dropped (with a notice)."""

    action_id: str
    migration_id: str = ""
    expires_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))


def expired(action: agent_pb2.Action, now: datetime | None = None) -> bool:
    """True when the action has an expiry that is not in the future."""
    if not action.HasField("expires_at"):
        return False
    expires: datetime = action.expires_at.ToDatetime(tzinfo=UTC)
    return expires <= (now or datetime.now(UTC))


class ActionHandler:
    """Turns received actions into run requests, cancellations or notices."""

    def __init__(
        self,
        control: RunControl,
        migration_ids: Collection[str],
        submit: Callable[[RunRequest], None],
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._control = control
        self._migration_ids = frozenset(migration_ids)
        self._submit = submit
        self._clock = clock or (lambda: datetime.now(UTC))

    def handle(self, action: agent_pb2.Action, outbox: Outbox) -> str:
        """Act on one action; refusals become notices in ``outbox``. Returns what was done:
        "queued", "cancelled", or "ignored"."""
        label = f"Action {action.action_id} ({action.kind or 'no kind'})"
        if expired(action, self._clock()):
            expires = action.expires_at.ToDatetime(tzinfo=UTC).isoformat()
            return self.notice(outbox, f"{label} expired at {expires}; ignored")
        if action.kind == RUN_MIGRATION:
            migration_id = action.params.get("migration_id", "")
            if migration_id and migration_id not in self._migration_ids:
                return self.notice(
                    outbox,
                    f"{label} ignored: no migration {migration_id!r} is registered on this agent",
                )
            log.info("%s: run requested", label)
            expires = (
                action.expires_at.ToDatetime(tzinfo=UTC) if action.HasField("expires_at") else None
            )
            self._submit(RunRequest(action.action_id, migration_id, expires))
            return "queued"
        if action.kind == CANCEL_RUN:
            run_id = action.params.get("run_id", "")
            if run_id and self._control.cancel(
                run_id, f"cancelled by request (action {action.action_id})"
            ):
                log.info("%s: cancelling run %s at the next step boundary", label, run_id)
                return "cancelled"
            return self.notice(
                outbox, f"{label} ignored: run {run_id or '(none given)'} is not in progress"
            )
        return self.notice(outbox, f"{label} ignored: unknown action kind {action.kind!r}")

    @staticmethod
    def notice(outbox: Outbox, message: str) -> str:
        """Log ``message`` and record it as an agent notice (warning); returns "ignored"."""
        log.warning("%s", message)
        outbox.add(events.agent_notice(message, agent_info()))
        return "ignored"
