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
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc

from agent.enroll import Credentials
from agent.outbox import Outbox, PendingEvent
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
_EVENT_INDEX = re.compile(r"events\[(\d+)\]")


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
        self, target: str, credentials: Credentials, timeout: timedelta = timedelta(seconds=10)
    ) -> None:
        self._target = target
        self._credentials = credentials
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

    def _send(
        self, facts: agent_pb2.HostFacts, events: list[agent_pb2.MigrationEvent]
    ) -> agent_pb2.CheckInResponse:
        if self._stub is None:
            self._channel = grpc.insecure_channel(self._target)
            self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        request = agent_pb2.CheckInRequest(
            agent_id=self._credentials.agent_id, facts=facts, events=events
        )
        metadata = (("authorization", f"Bearer {self._credentials.credential}"),)
        response: agent_pb2.CheckInResponse = self._stub.CheckIn(
            request, metadata=metadata, timeout=self._timeout
        )
        return response

    def cycle(
        self,
        outbox: Outbox,
        facts: agent_pb2.HostFacts,
        *,
        max_events: int,
        max_bytes: int,
        max_chunks: int,
    ) -> CheckInResult:
        """One check-in cycle (see the module docstring); records state in the outbox."""
        requests = sent = acked = quarantined = 0
        limit = max_events
        interval: timedelta | None = None
        actions: list[agent_pb2.Action] = []
        while requests < max_chunks:
            chunk = outbox.oldest(limit, max_bytes)
            events = [item.message() for item in chunk]
            requests += 1
            try:
                response = self._send(facts, events)
            except grpc.RpcError as error:
                code = error.code()
                details = error.details() or ""
                if code == grpc.StatusCode.INVALID_ARGUMENT and chunk:
                    match = _EVENT_INDEX.search(details)
                    if match and int(match.group(1)) < len(chunk):
                        bad = chunk[int(match.group(1))]
                    elif len(chunk) == 1:
                        bad = chunk[0]
                    else:
                        limit = max(1, len(chunk) // 2)
                        log.warning(
                            "check-in rejected (%s); retrying with %d events", details, limit
                        )
                        continue
                    notice = outbox.quarantine(
                        bad.event_id, f"server rejected it (INVALID_ARGUMENT): {details}"
                    )
                    quarantined += 1
                    log.error(
                        "event %s quarantined: server rejected it: %s%s",
                        bad.event_id,
                        details,
                        f" (warning notice {notice.event_id} queued)" if notice else "",
                    )
                    continue
                return self._failed(
                    outbox, chunk, code, details, error, requests, sent, acked, quarantined
                )
            sent += len(chunk)
            sent_ids = {item.event_id for item in chunk}
            acked_ids = [i for i in response.acknowledged_event_ids if i in sent_ids]
            acked += outbox.ack(acked_ids)
            actions.extend(response.actions)
            if response.next_checkin_seconds > 0:
                interval = timedelta(seconds=response.next_checkin_seconds)
            if chunk and not acked_ids:
                log.warning("server acknowledged none of %d events; will retry later", len(chunk))
                break
            if not chunk or outbox.depth() == 0:
                break
        more = requests >= max_chunks and outbox.depth() > 0
        now = datetime.now(UTC).isoformat()
        outbox.set_state("last_checkin_at", now)
        outbox.set_state("last_checkin_result", f"ok: sent {sent}, acked {acked}")
        log.info(
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
