"""Verifying a signed action before anything else looks at it.

An ``Action`` carries ``body`` (a serialized ``ActionBody``) and ``signature`` (the server's
Ed25519 signature over exactly those bytes). The agent checks, in this order:

1. it has a pinned server key (stored with the credentials at enrollment; none: "re-enroll");
2. the action is signed at all, and the signature verifies over the body bytes with the pinned
   key (a flipped byte anywhere, or another key's signature, fails here) — the body is not
   parsed before this;
3. the body parses, names the same action id as the envelope, carries a 16-byte nonce and an
   expiry, and is addressed to this agent;
4. it has not expired by the agent's clock. The refusal says the agent's clock time and the
   action's ``issued_at``, and points at clock skew when the times cannot all be right: the
   action was issued in the future by the agent's clock, or it arrived expired although the
   server sent it unexpired (the server only hands out actions issued less than their lifetime
   ago by its own clock, and actions are verified as they arrive) by more than
   :data:`TRANSIT_GRACE` (how late an action could arrive without a wrong clock).

Replays (a nonce seen before) are checked against the outbox by :mod:`agent.actions`.
Each failure is an :class:`ActionRefused` whose ``reason`` says which rule failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError

from agent.errors import AgentError
from flagpost.v1 import agent_pb2

NONCE_BYTES = 16
# An action the server sent unexpired that arrives expired by more than this means the agent's
# clock is ahead of the server's (a check-in's RPC timeout is 10 s by default).
TRANSIT_GRACE = timedelta(seconds=30)


class ActionRefused(AgentError):
    """An action that must not be executed; ``reason`` is reported in an agent notice."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedAction:
    """What a correctly signed, unexpired action for this agent says."""

    action_id: str
    kind: str
    params: dict[str, str] = field(repr=False)  # may hold secret answers (provide_input)
    issued_at: datetime | None
    expires_at: datetime
    nonce: bytes


def verify(
    action: agent_pb2.Action, pinned_key: bytes, agent_id: str, now: datetime | None = None
) -> VerifiedAction:
    """The verified content of ``action`` (see the module docstring), else ActionRefused."""
    if not pinned_key:
        raise ActionRefused(
            "no pinned server signing key (enrolled by an older agent?): re-enroll the agent "
            "(flagpost-agent enroll) to pin the server's key"
        )
    if not action.signature or not action.body:
        raise ActionRefused("unsigned action (no body or no signature)")
    # Imported here, not at module level: OpenSSL's bindings cost an idle daemon ~8 MiB of RSS,
    # and most check-ins carry no action (measured by `python -m tests.bench.agent_rss`).
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(pinned_key)
    except ValueError:
        raise ActionRefused("the pinned server key is unusable: re-enroll the agent") from None
    try:
        key.verify(action.signature, action.body)
    except InvalidSignature:
        raise ActionRefused(
            "bad signature: the action was tampered with or not signed by the pinned server key"
        ) from None
    body = agent_pb2.ActionBody()
    try:
        body.ParseFromString(action.body)
    except DecodeError:
        raise ActionRefused("malformed body (signed, but not an ActionBody)") from None
    if body.action_id != action.action_id:
        raise ActionRefused(f"the signed body names another action id ({body.action_id!r})")
    if len(body.nonce) != NONCE_BYTES:
        raise ActionRefused(f"malformed body: the nonce must be {NONCE_BYTES} bytes")
    if not body.HasField("expires_at"):
        raise ActionRefused("malformed body: no expiry")
    if body.agent_id != agent_id:
        raise ActionRefused(f"addressed to another agent ({body.agent_id!r}, not {agent_id!r})")
    expires = body.expires_at.ToDatetime(tzinfo=UTC)
    issued = body.issued_at.ToDatetime(tzinfo=UTC) if body.HasField("issued_at") else None
    now = now or datetime.now(UTC)
    if expires <= now:
        raise ActionRefused(expired_reason(now, issued, expires))
    return VerifiedAction(
        action_id=body.action_id,
        kind=body.kind,
        params=dict(body.params),
        issued_at=issued,
        expires_at=expires,
        nonce=bytes(body.nonce),
    )


def _seconds(span: timedelta) -> str:
    return f"{span.total_seconds():.0f} s"


def expired_reason(now: datetime, issued: datetime | None, expires: datetime) -> str:
    """Why an action that expired at ``expires`` is refused at ``now`` (the agent's clock):
    both times, and a hint when they suggest that one of the two clocks is wrong."""
    reason = (
        f"expired at {expires.isoformat()} (agent clock {now.isoformat()}, issued at "
        f"{issued.isoformat() if issued is not None else 'unknown'})"
    )
    if issued is None:
        return reason
    if issued > now:
        return (
            f"{reason}; it was issued {_seconds(issued - now)} in the future by the agent's "
            "clock: the agent's or the server's clock is wrong (clock skew?)"
        )
    late = now - expires
    if late > TRANSIT_GRACE:
        lifetime = expires - issued
        return (
            f"{reason}; the server sent it issued less than its lifetime ({_seconds(lifetime)}) "
            f"ago by its clock, yet it arrived {_seconds(late)} past its expiry by the agent's "
            "clock: the agent's clock is probably ahead of the server's (clock skew?)"
        )
    return reason
