"""Agent credential lifetime and rotation.

A credential gets ``expires_at = enrolled + credential_ttl_days`` (0: never expires); after that
it is refused (UNAUTHENTICATED "credential expired at ...; re-enroll"). A check-in authenticated
with a credential that is within ``credential_rotate_before_days`` of its expiry, or of an agent
for which ``flagpost-server agent rotate ID`` was run, receives a new credential in
``CheckInResponse.new_credential``; only its SHA-256 is stored.

The old credential stays valid until the new one is first used: that first use records
``last_used_at``, revokes every other credential of the agent and clears the rotation request.
If the response carrying the new credential was lost (the agent keeps presenting the old one),
the next check-in revokes the never-used new credential and hands out a fresh one.

The database decides, not the authentication cache: a first use or a rotation runs in one
transaction that first locks the agent (``agents_db.lock_agent``: several server processes
change one agent's credentials one at a time) and re-reads the presented credential. If it was
revoked meanwhile (another process saw the new credential's first use while this one still had
the old credential cached), nothing is issued and the check-in is refused UNAUTHENTICATED.

Revocation of the old credential is immediate in the process that saw the first use (its
authentication cache forgets the agent); other processes refuse it once they read the change
from ``auth_changes`` (about a second: ``server.services.agents``), and at once for a check-in
that would rotate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.errors import FlagpostError
from server.services.agents import AgentIdentity, Authenticator, checked_identity
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
    """True when a check-in with this credential should receive a new one: rotation was
    requested, the credential is within ``credential_rotate_before_days`` of its expiry, or it
    has no expiry while credentials expire (``credential_ttl_days`` > 0: one issued before
    expiry existed; the new one gets an expiry)."""
    if identity.rotate_requested_at is not None:
        return True
    if identity.expires_at is None:
        return config.credential_ttl_days > 0
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
        """Record a first use (revoking the agent's other credentials) and return a new
        credential when rotation is due. No database access in the common case (used, not due).
        Raises Unauthenticated (PermissionDenied: the agent) when the database says the
        presented credential was revoked meanwhile; nothing is issued then."""
        if identity.used and not rotation_due(identity, self._config, now):
            return None
        with unavailable_on_outage("credential rotation"):
            async with self._sessions() as session, session.begin():
                await agents_db.lock_agent(session, identity.agent_id)
                record = await agents_db.get_credential(session, identity.credential_id)
                try:
                    current = checked_identity(record)
                except FlagpostError:
                    self._authenticator.forget(identity.agent_id)
                    raise
                first_use = not current.used
                if first_use:
                    created = current.created_at or now
                    await agents_db.mark_credential_used(
                        session, current.agent_id, current.credential_id, created, now
                    )
                    requested = current.rotate_requested_at
                    if requested is not None and requested <= created:
                        requested = None  # this credential answers that request
                    current = current._replace(used=True, rotate_requested_at=requested)
                issued: NewCredential | None = None
                if rotation_due(current, self._config, now):
                    issued = NewCredential(new_credential(), credential_expiry(self._config, now))
                    await agents_db.revoke_unused_newer(
                        session, current.agent_id, current.credential_id, now
                    )
                    await agents_db.store_credential(
                        session,
                        current.agent_id,
                        secret_hash(issued.credential),
                        now,
                        issued.expires_at,
                    )
        if not identity.used:  # the cache thought it unused: it is used now (here or elsewhere)
            self._authenticator.settle(current)  # the other ones: refused at once here
        return issued
