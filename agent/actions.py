"""Actions from the server: verify them, then what each one means to the agent.

A check-in response may carry actions. Every received action id is recorded in the outbox (see
:mod:`agent.run_queue`) and acknowledged in the next check-in, whatever happens to it; an action
is executed at most once (a re-delivered id is acknowledged again, not executed again; an agent
killed between receiving and executing an action does not execute it after the restart).

Before anything else an action is verified (:mod:`agent.action_verify`): signed with the server
key pinned at enrollment over exactly its body bytes, addressed to this agent, not expired; then
its nonce must be new (:meth:`agent.run_queue.RunQueue.claim_nonce`, durable). An action that
fails any check is refused: not executed, acknowledged, and reported as an ``agent_notice``
warning event naming the reason (unsigned, bad signature, malformed, another agent's, expired,
replayed, no pinned key).

Accepted actions are dispatched by kind (:meth:`ActionHandler.register` adds a kind):

* ``run_migration`` (params: ``migration_id``, optional; none means every registered
  migration): queued for the migration worker, which starts a run whose RunUpdates carry
  ``requested_by_action_id``. Such a run is always reported, even when nothing is needed.
* ``cancel_run`` (params: ``run_id``): the run in progress stops at its next step boundary,
  rolls back every applied step and ends CANCELLED (PARTIAL if the rollback failed); its
  execution event is ``migration_execution_failed`` with ``exception_type`` "RunCancelled" and a
  message saying it was cancelled. A run recorded as waiting for input that is not the run in
  progress (left waiting by ``once`` or ``migrate``, or the daemon has not resumed it yet) is
  marked cancelled and resumed at once by the migration worker, which ends it CANCELLED with
  nothing changed (reported the same way). A cancel for a run that is neither (finished, or
  unknown here) is refused with a notice.
* ``preview_migration``, ``revert_run``, and ``run_migration`` carrying a ``spec``: the
  server-defined specs (:mod:`agent.specs.actions` registers them).
* An action of an unknown kind is ignored and reported as an ``agent_notice`` warning event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from agent import events
from agent.action_verify import ActionRefused, VerifiedAction, verify
from agent.outbox import Outbox
from agent.runs import RunControl
from agent.sysinfo import agent_info
from flagpost.v1 import agent_pb2

log = logging.getLogger(__name__)

RUN_MIGRATION = "run_migration"
CANCEL_RUN = "cancel_run"
PREVIEW_MIGRATION = "preview_migration"  # agent/specs/actions.py
REVERT_RUN = "revert_run"  # agent/specs/actions.py

# (verified action, outbox) -> what was done ("queued", "cancelled", "ignored", ...)
KindHandler = Callable[[VerifiedAction, Outbox], str]


@dataclass(frozen=True, slots=True)
class Trust:
    """What verification needs: this agent's id and the server key pinned at enrollment."""

    agent_id: str
    server_key: bytes


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run the server asked for: ``migration_id`` "" means every registered migration.
    ``expires_at``: the action's expiry; a request still queued then is dropped (with a notice).
    ``resume_run_id``: not a run the server asked for but the resumption of that waiting run
    (cancelled while not in progress, see :meth:`ActionHandler._cancel_run`), skipped if it no
    longer waits. ``job``: work the migration worker does instead of running ``migration_id``
    from the registry (a spec's run, preview or revert); ``kind``: the action's kind."""

    action_id: str
    migration_id: str = ""
    expires_at: datetime | None = None
    resume_run_id: str = ""
    kind: str = RUN_MIGRATION
    job: Callable[[], object] | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))


class ActionHandler:
    """Verifies received actions and turns them into run requests, cancellations or notices."""

    def __init__(
        self,
        control: RunControl,
        migration_ids: Collection[str],
        submit: Callable[[RunRequest], None],
        trust: Callable[[], Trust | None],
        clock: Callable[[], datetime] | None = None,
        cancel_waiting: Callable[[str, str], str | None] | None = None,
    ) -> None:
        """``trust``: the agent id and pinned key (None: not enrolled), read per action so a
        re-enrollment takes effect at once. ``cancel_waiting(run_id, reason)``: marks a run
        recorded as waiting for input cancelled, returning its migration id (None: no such
        run; see :meth:`agent.migrations.engine.MigrationEngine.cancel_waiting`)."""
        self._control = control
        self._cancel_waiting = cancel_waiting
        self._migration_ids = frozenset(migration_ids)
        self._submit = submit
        self._trust = trust
        self._clock = clock or (lambda: datetime.now(UTC))
        self._kinds: dict[str, KindHandler] = {
            RUN_MIGRATION: self._run_migration,
            CANCEL_RUN: self._cancel_run,
        }

    def register(self, kind: str, handler: KindHandler) -> None:
        """Handle verified actions of ``kind`` with ``handler`` (replaces an earlier one)."""
        self._kinds[kind] = handler

    def kind_handler(self, kind: str) -> KindHandler | None:
        """The handler of ``kind`` (None: none registered), e.g. to wrap it."""
        return self._kinds.get(kind)

    def handle(self, action: agent_pb2.Action, outbox: Outbox) -> str:
        """Verify and act on one action; refusals become notices in ``outbox``. Returns what was
        done: "queued", "cancelled", "refused" or "ignored" (or a registered handler's word)."""
        trust = self._trust()
        try:
            verified = verify(
                action,
                trust.server_key if trust is not None else b"",
                trust.agent_id if trust is not None else "",
                self._clock(),
            )
            earlier = outbox.runs.claim_nonce(
                verified.nonce, verified.action_id, verified.expires_at
            )
            if earlier is not None:
                raise ActionRefused(f"replayed (its nonce was already used by action {earlier})")
        except ActionRefused as refusal:
            self.notice(outbox, f"Action {action.action_id} refused: {refusal.reason}")
            return "refused"
        handler = self._kinds.get(verified.kind)
        if handler is None:
            return self.notice(
                outbox,
                f"Action {verified.action_id} ignored: unknown action kind {verified.kind!r}",
            )
        return handler(verified, outbox)

    def _run_migration(self, action: VerifiedAction, outbox: Outbox) -> str:
        label = f"Action {action.action_id} ({action.kind})"
        migration_id = action.params.get("migration_id", "")
        if migration_id and migration_id not in self._migration_ids:
            return self.notice(
                outbox,
                f"{label} ignored: no migration {migration_id!r} is registered on this agent",
            )
        log.info("%s: run requested", label)
        self._submit(RunRequest(action.action_id, migration_id, action.expires_at))
        return "queued"

    def _cancel_run(self, action: VerifiedAction, outbox: Outbox) -> str:
        label = f"Action {action.action_id} ({action.kind})"
        run_id = action.params.get("run_id", "")
        reason = f"cancelled by request (action {action.action_id})"
        if run_id and self._control.cancel(run_id, reason):
            log.info("%s: cancelling run %s at the next step boundary", label, run_id)
            return "cancelled"
        migration_id = (
            self._cancel_waiting(run_id, reason) if run_id and self._cancel_waiting else None
        )
        if migration_id is not None:
            # The worker may have begun resuming it meanwhile: then it is in progress now and
            # the RunControl reaches it (the engine reads the mark only after it began).
            self._control.cancel(run_id, reason)
            log.info("%s: run %s waits for input, not in progress; ending it", label, run_id)
            self._submit(RunRequest(action.action_id, migration_id, resume_run_id=run_id))
            return "cancelled"
        return self.notice(
            outbox, f"{label} ignored: run {run_id or '(none given)'} is not in progress"
        )

    @staticmethod
    def notice(outbox: Outbox, message: str, labels: events.RunLabels = events.NO_LABELS) -> str:
        """Log ``message`` and record it as an agent notice (warning; ``labels``: the action
        and spec it is about); returns "ignored"."""
        log.warning("%s", message)
        outbox.add(events.agent_notice(message, agent_info(), labels=labels))
        return "ignored"
