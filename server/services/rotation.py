"""Agent credential lifetime and rotation.

A credential gets ``expires_at = enrolled + credential_ttl_days`` (0: never expires); after that
it is refused (UNAUTHENTICATED "credential expired at ...; re-enroll"). A check-in authenticated
with a credential that is within ``credential_rotate_before_days`` of its expiry, or of an agent
for which ``flagpost-server agent rotate ID`` was run, receives a new credential in
``CheckInResponse.new_credential``; only its SHA-256 is stored.

The old credential stays valid until the new one is first used: that first use records
``last_used_at``, revokes every older credential of the agent and clears the rotation request.
If the response carrying the new credential was lost (the agent keeps presenting the old one),
the next check-in revokes the never-used new credential and hands out a fresh one.

Revocation of the old credential is immediate in the process that saw the first use (its
authentication cache forgets the agent); other processes notice within ``AUTH_CACHE_TTL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.services.agents import AgentIdentity, Authenticator
from server.services.enrollment import new_credential, secret_hash
from server.services.health import unavailable_on_outage
from server.storage import agents as agents_db


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A rotated-in credential, shown once (in the check-in response). ``repr`` hides it."""

    credential: str
    expires_at: datetime | None

    def __repr__(self) -> str:
        return f"NewCredential(credential='***', expires_at={self.expires_at!r})"


def credential_expiry(config: ServerConfig, now: datetime) -> datetime | None:
    """When a credential issued at ``now`` expires (None: ``credential_ttl_days`` = 0)."""
    if config.credential_ttl_days <= 0:
        return None
    return now + timedelta(days=config.credential_ttl_days)


def rotation_due(identity: AgentIdentity, config: ServerConfig, now: datetime) -> bool:
    """True when a check-in with this credential should receive a new one."""
    if identity.rotate_requested_at is not None:
        return True
    if identity.expires_at is None:
        return False
    return identity.expires_at - now <= timedelta(days=config.credential_rotate_before_days)


class CredentialRotation:
    """Applies the rules of the module docstring at every authenticated check-in."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        config: ServerConfig,
        authenticator: Authenticator,
    ) -> None:
        self._sessions = sessions
        self._config = config
        self._authenticator = authenticator

    async def after_checkin(self, identity: AgentIdentity, now: datetime) -> NewCredential | None:
        """Record a first use (revoking older credentials) and return a new credential when
        rotation is due. No database access in the common case (used, not due)."""
        if not identity.used:
            created = identity.created_at or now
            with unavailable_on_outage("credential rotation"):
                async with self._sessions() as session, session.begin():
                    await agents_db.mark_credential_used(
                        session, identity.agent_id, identity.credential_id, created, now
                    )
            requested = identity.rotate_requested_at
            if requested is not None and requested <= created:
                requested = None  # this credential answers that request
            identity = identity._replace(used=True, rotate_requested_at=requested)
            self._authenticator.settle(identity)  # the older ones: refused at once
        if not rotation_due(identity, self._config, now):
            return None
        credential = new_credential()
        expires_at = credential_expiry(self._config, now)
        with unavailable_on_outage("credential rotation"):
            async with self._sessions() as session, session.begin():
                await agents_db.revoke_unused_newer(
                    session, identity.agent_id, identity.credential_id, now
                )
                await agents_db.store_credential(
                    session, identity.agent_id, secret_hash(credential), now, expires_at
                )
        return NewCredential(credential, expires_at)
