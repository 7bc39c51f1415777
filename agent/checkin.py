"""The check-in client: sends outbox chunks with ``CheckIn`` and deletes only what was acked.

One check-in cycle sends the oldest events in chunks bounded by count and bytes, repeating while
the outbox has more (at most ``max_chunks`` requests per cycle), and always at least one request
(an empty one is the heartbeat). Error handling by status code:

* UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (``retry-after-ms`` trailing metadata is
  honoured), and anything unexpected: retryable; the caller backs off (:mod:`agent.backoff`).
* INVALID_ARGUMENT naming ``events[i]``: that event is quarantined (with a warning notice queued
  about it, see :meth:`agent.outbox.Outbox.quarantine`) and the rest retried at once; without an
  index the chunk is halved (a single event is quarantined): nothing blocks the queue.
* UNAUTHENTICATED, PERMISSION_DENIED: not retryable soon; logged clearly, long back-off.

After UNAVAILABLE the channel is closed and the next cycle opens a fresh one, so the moment the
agent reconnects is decided by its own jittered backoff, not by gRPC's internal reconnect backoff
(which grows to two minutes and is the same for every agent).

Events are never deleted except by an acknowledgement.

Credential rotation: a response carrying ``new_credential`` is stored first (atomically, 0600,
:func:`agent.enroll.save_credentials`), then used from the next call on. The stored file is read
again first and only its credential is replaced, and only if it still names the agent that was
rotated: if someone re-enrolled meanwhile (the file names another agent), the file is kept, a
warning logged, and the file's identity is used from the next call on. If it cannot be stored
the old credential is kept (the server keeps it valid until the new one is used, and hands out
another at the next check-in). The credential is never logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from agent import events
from agent.diagnose import unreachable_reason
from agent.enroll import Credentials, EnrollmentError, load_credentials, save_credentials
from agent.outbox import Outbox, PendingEvent
from agent.run_queue import PendingLine, PendingUpdate
from agent.sysinfo import agent_info
from agent.tls import ChannelSecurity, open_channel
from flagpost.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
AUTH_FAILURES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_ITEM_INDEX = re.compile(r"(events|run_updates|log_lines)\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class CheckInResult:
    """The outcome of one check-in cycle."""

    ok: bool
    requests: int = 0
    sent: int = 0
    acked: int = 0
    quarantined: int = 0
    next_interval: timedelta | None = None
    error: str = ""
    code: str = ""
    auth_failed: bool = False
    retry_after: timedelta | None = None
    actions: tuple[agent_pb2.Action, ...] = field(default_factory=tuple)
    more: bool = False  # stopped at max_chunks with events left: go again soon


def _retry_after(error: grpc.RpcError) -> timedelta | None:
    trailing = error.trailing_metadata() or ()
    for key, value in trailing:
        if key == "retry-after-ms":
            try:
                return timedelta(milliseconds=max(0, int(value)))
            except ValueError:
                return None
    return None


class CheckInClient:
    """A synchronous gRPC client for ``AgentService.CheckIn``; close it (or use ``with``)."""

    def __init__(
        self,
        target: str,
        credentials: Credentials,
        timeout: timedelta = timedelta(seconds=10),
        security: ChannelSecurity | None = None,
        credentials_path: Path | None = None,
    ) -> None:
        """``security``: TLS settings for the channel (:mod:`agent.tls`); None is plain text.
        ``credentials_path``: where a rotated-in credential is stored (None: memory only)."""
        self._target = target
        self._security = security
        self._credentials = credentials
        self._credentials_path = credentials_path
        self._timeout = timeout.total_seconds()
        self._channel: grpc.Channel | None = None
        self._stub: agent_pb2_grpc.AgentServiceStub | None = None

    @property
    def target(self) -> str:
        return self._target

    def close(self) -> None:
        """Close the channel (idempotent); a later cycle opens a new one."""
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None

    def __enter__(self) -> CheckInClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, request: agent_pb2.CheckInRequest) -> agent_pb2.CheckInResponse:
        if self._stub is None:
            # ChannelError (an RpcError, UNAVAILABLE) when TLS cannot be set up
            self._channel = open_channel(self._target, self._security, self._timeout)
            self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        request.agent_id = self._credentials.agent_id
        metadata = (("authorization", f"Bearer {self._credentials.credential}"),)
        response: agent_pb2.CheckInResponse = self._stub.CheckIn(
            request, metadata=metadata, timeout=self._timeout
        )
        if response.new_credential:
            self._adopt(response)
        return response

    def use(self, credentials: Credentials) -> None:
        """Use ``credentials`` from the next call on (the daemon passes the stored ones before
        each cycle, so a re-enrollment takes effect without a restart)."""
        if credentials.agent_id != self._credentials.agent_id:
            log.info(
                "credentials changed on disk: checking in as agent %s (was %s)",
                credentials.agent_id,
                self._credentials.agent_id,
            )
        self._credentials = credentials

    def _adopt(self, response: agent_pb2.CheckInResponse) -> None:
        """Store a rotated-in credential, then use it from the next call on."""
        expires = (
            response.new_credential_expires_at.ToDatetime(tzinfo=UTC)
            if response.HasField("new_credential_expires_at")
            else None
        )
        rotated = self._credentials.rotated(response.new_credential, expires)
        if self._credentials_path is not None:
            try:
                # Re-read the file: it may have changed since these credentials were loaded.
                stored = load_credentials(self._credentials_path)
            except EnrollmentError as exc:
                log.error(
                    "the server rotated this agent's credential but %s is unreadable (%s); "
                    "keeping the current one",
                    self._credentials_path,
                    exc,
                )
                return
            if stored is None:
                log.error(
                    "the server rotated this agent's credential but %s is gone; not storing it",
                    self._credentials_path,
                )
                return
            if stored.agent_id != self._credentials.agent_id:
                log.warning(
                    "the server rotated the credential of agent %s, but %s now names agent %s "
                    "(re-enrolled?): keeping the file, checking in as %s from now on",
                    self._credentials.agent_id,
                    self._credentials_path,
                    stored.agent_id,
                    stored.agent_id,
                )
                self._credentials = stored
                return
            rotated = stored.rotated(response.new_credential, expires)
            try:
                save_credentials(self._credentials_path, rotated)
            except OSError as exc:
                log.error(
                    "the server rotated this agent's credential but it cannot be stored in %s "
                    "(%s); keeping the current one",
                    self._credentials_path,
                    exc.strerror or type(exc).__name__,
                )
                return
        self._credentials = rotated
        log.info(
            "agent credential rotated by the server (new one expires %s)",
            expires.isoformat() if expires is not None else "never",
        )

    def cycle(
        self,
        outbox: Outbox,
        facts: agent_pb2.HostFacts,
        *,
        max_events: int,
        max_bytes: int,
        max_chunks: int,
        max_run_updates: int | None = None,
        max_log_lines: int = 500,
    ) -> CheckInResult:
        """One check-in cycle (see the module docstring); records state in the outbox."""
        runs = outbox.runs
        requests = sent = acked = quarantined = 0
        limits = {"events": max_events, "run_updates": max_run_updates or max_events}
        limits["log_lines"] = max_log_lines
        # Kinds not sent again this cycle: the server acknowledged none of them (an older server
        # ignores run updates and log lines), or a rejection without an index is narrowed down.
        paused: set[str] = set()
        interval: timedelta | None = None
        actions: list[agent_pb2.Action] = []
        while requests < max_chunks:
            # Events first, with the whole byte budget (an event that alone exceeds it is
            # quarantined by Outbox.oldest); run updates and log lines fill what is left.
            chunk = [] if "events" in paused else outbox.oldest(limits["events"], max_bytes)
            budget = max_bytes - sum(len(item.payload) + 6 for item in chunk)
            updates = (
                []
                if "run_updates" in paused or budget <= 0
                else runs.oldest_updates(limits["run_updates"], budget)
            )
            budget -= sum(item.size for item in updates)
            lines = (
                []
                if "log_lines" in paused or budget <= 0
                else runs.oldest_lines(limits["log_lines"], budget)
            )
            action_acks = runs.pending_action_acks()
            request = agent_pb2.CheckInRequest(
                facts=facts,
                events=[item.message() for item in chunk],
                run_updates=[item.update for item in updates],
                log_lines=[item.line for item in lines],
                acknowledged_action_ids=action_acks,
            )
            requests += 1
            try:
                response = self._send(request)
            except grpc.RpcError as error:
                code = error.code()
                details = error.details() or ""
                sent_kinds = {
                    kind: len(items)
                    for kind, items in (
                        ("events", chunk),
                        ("run_updates", updates),
                        ("log_lines", lines),
                    )
                    if items
                }
                if code == grpc.StatusCode.INVALID_ARGUMENT and sent_kinds:
                    match = _ITEM_INDEX.search(details)
                    if match is None and sum(sent_kinds.values()) > 1:
                        # No index: narrow down. One kind at a time, then halve the chunk.
                        first = next(iter(sent_kinds))
                        if len(sent_kinds) > 1:
                            paused.update(kind for kind in sent_kinds if kind != first)
                        else:
                            limits[first] = max(1, sent_kinds[first] // 2)
                        log.warning("check-in rejected (%s); retrying with smaller chunks", details)
                        continue
                    kind, index = (
                        (match.group(1), int(match.group(2)))
                        if match is not None
                        else (next(iter(sent_kinds)), 0)
                    )
                    if self._set_aside(outbox, kind, index, details, chunk, updates, lines):
                        quarantined += 1
                        continue
                return self._failed(
                    outbox, chunk, code, details, error, requests, sent, acked, quarantined
                )
            runs.mark_actions_acked(action_acks)
            actions.extend(runs.receive_actions(response.actions))
            sent += len(chunk)
            sent_ids = {item.event_id for item in chunk}
            acked_ids = [i for i in response.acknowledged_event_ids if i in sent_ids]
            acked += outbox.ack(acked_ids)
            sent_updates = {item.update_id for item in updates}
            acked_updates = [i for i in response.acknowledged_run_update_ids if i in sent_updates]
            runs.ack_updates(acked_updates)
            sent_lines = {(item.run_id, item.seq) for item in lines}
            acked_lines = [
                (ack.run_id, int(seq))
                for ack in response.acknowledged_log_lines
                for seq in ack.seqs
                if (ack.run_id, int(seq)) in sent_lines
            ]
            runs.ack_lines(acked_lines)
            if response.next_checkin_seconds > 0:
                interval = timedelta(seconds=response.next_checkin_seconds)
            for kind, was_sent, was_acked in (
                ("events", chunk, acked_ids),
                ("run_updates", updates, acked_updates),
                ("log_lines", lines, acked_lines),
            ):
                if was_sent and not was_acked:
                    log.warning(
                        "server acknowledged none of %d %s; will retry later",
                        len(was_sent),
                        kind.replace("_", " "),
                    )
                    paused.add(kind)
            if not self._more(outbox, paused):
                break
        more = requests >= max_chunks and self._more(outbox, paused)
        now = datetime.now(UTC).isoformat()
        outbox.set_state("last_checkin_at", now)
        outbox.set_state("last_checkin_result", f"ok: sent {sent}, acked {acked}")
        log.log(
            logging.INFO if sent or acked or quarantined else logging.DEBUG,
            "checked in: %d sent, %d acked, %d quarantined, %d left",
            sent,
            acked,
            quarantined,
            outbox.depth(),
        )
        return CheckInResult(
            ok=True,
            requests=requests,
            sent=sent,
            acked=acked,
            quarantined=quarantined,
            next_interval=interval,
            actions=tuple(actions),
            more=more,
        )

    @staticmethod
    def _more(outbox: Outbox, paused: set[str]) -> bool:
        """Anything left to send that the server has been acknowledging this cycle."""
        counts = outbox.runs.counts()
        return (
            ("events" not in paused and outbox.depth() > 0)
            or ("run_updates" not in paused and counts["run_updates_pending"] > 0)
            or ("log_lines" not in paused and counts["log_lines_pending"] > 0)
        )

    @staticmethod
    def _set_aside(
        outbox: Outbox,
        kind: str,
        index: int,
        details: str,
        chunk: list[PendingEvent],
        updates: list[PendingUpdate],
        lines: list[PendingLine],
    ) -> bool:
        """Quarantine the item an INVALID_ARGUMENT names (``events[i]``, ``run_updates[i]``,
        ``log_lines[i]``), with a warning notice; False if there is no such item."""
        reason = f"server rejected it (INVALID_ARGUMENT): {details}"
        if kind == "events" and index < len(chunk):
            bad = chunk[index]
            notice = outbox.quarantine(bad.event_id, reason)
            log.error(
                "event %s quarantined: %s%s",
                bad.event_id,
                reason,
                f" (warning notice {notice.event_id} queued)" if notice else "",
            )
            return True
        if kind == "run_updates" and index < len(updates):
            update = updates[index].update
            outbox.runs.quarantine_update(update.update_id, reason)
            outbox.add(
                events.agent_notice(
                    f"RunUpdate {update.update_id} of run {update.run_id} quarantined: {reason}",
                    agent_info(),
                )
            )
            log.error("run update %s quarantined: %s", update.update_id, reason)
            return True
        if kind == "log_lines" and index < len(lines):
            line = lines[index]
            outbox.runs.quarantine_line(line.run_id, line.seq, reason)
            outbox.add(
                events.agent_notice(
                    f"Log line {line.seq} of run {line.run_id} quarantined: {reason}", agent_info()
                )
            )
            log.error("log line %s/%d quarantined: %s", line.run_id, line.seq, reason)
            return True
        return False

    def _failed(
        self,
        outbox: Outbox,
        chunk: list[PendingEvent],
        code: grpc.StatusCode | None,
        details: str,
        error: grpc.RpcError,
        requests: int,
        sent: int,
        acked: int,
        quarantined: int,
    ) -> CheckInResult:
        name = code.name if code is not None else "UNKNOWN"
        if code == grpc.StatusCode.UNAVAILABLE:
            details = unreachable_reason(self._target, details)
        message = f"check-in to {self._target} failed: {name}: {details}"
        auth = code in AUTH_FAILURES
        if auth:
            log.error(
                "%s (credential rejected: re-enroll or check that the agent is not revoked)",
                message,
            )
        else:
            log.warning("%s", message)
        if code == grpc.StatusCode.UNAVAILABLE:
            self.close()  # reconnect on our own (jittered) schedule, see the module docstring
        outbox.record_attempt([item.event_id for item in chunk], message)
        outbox.set_state("last_error", message)
        outbox.set_state("last_error_at", datetime.now(UTC).isoformat())
        return CheckInResult(
            ok=False,
            requests=requests,
            sent=sent,
            acked=acked,
            quarantined=quarantined,
            error=message,
            code=name,
            auth_failed=auth,
            retry_after=_retry_after(error) if code in RETRYABLE else None,
        )
