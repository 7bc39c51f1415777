"""Enrollment: operators create tokens, agents trade a token + host facts for a credential.

Tokens (``fpt_…``) and credentials (``fpa_…``) are 256-bit random secrets shown exactly once;
only their SHA-256 hex digests are stored (a fast hash is enough for high-entropy secrets).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.domain import HostFacts
from server.errors import InvalidArgument, NotFound, Unauthenticated
from server.services.health import unavailable_on_outage
from server.storage import agents as agents_db
from server.storage import tokens as tokens_db
from server.storage.tokens import TokenRefusal

TOKEN_PREFIX = "fpt_"  # noqa: S105 - a public prefix, not a secret
CREDENTIAL_PREFIX = "fpa_"
_SECRET_BYTES = 32
DISPLAY_PREFIX_CHARS = 12  # "fpt_" + 8 characters: tells tokens apart, reveals ~48 of 256 bits
MAX_TOKEN_USES = 1_000_000

_REFUSALS = {
    TokenRefusal.UNKNOWN: "invalid enrollment token",
    TokenRefusal.EXPIRED: "enrollment token has expired",
    TokenRefusal.USED_UP: "enrollment token has no uses left",
    TokenRefusal.REVOKED: "enrollment token has been revoked",
}


def secret_hash(secret: str) -> str:
    """SHA-256 hex of a token or credential: the only form a secret is stored in."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_credential() -> str:
    """A fresh agent credential (``fpa_`` + 43 url-safe characters)."""
    return CREDENTIAL_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


async def create_token(
    sessions: async_sessionmaker[AsyncSession],
    uses: int = 1,
    expires_in: timedelta | None = timedelta(hours=24),
) -> str:
    """Create an enrollment token good for ``uses`` enrollments until ``expires_in`` from now
    (None: never expires). Returns the plaintext token; it cannot be recovered later."""
    if not 1 <= uses <= MAX_TOKEN_USES:
        raise InvalidArgument(f"must be between 1 and {MAX_TOKEN_USES}", field="uses")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidArgument("must be positive", field="expires")
    token = TOKEN_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        await tokens_db.create_token(
            session,
            token_hash=secret_hash(token),
            prefix=token[:DISPLAY_PREFIX_CHARS],
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            uses=uses,
        )
    return token


async def enroll(
    sessions: async_sessionmaker[AsyncSession],
    token: str,
    facts: HostFacts,
    checkin_interval_seconds: int = 60,
    credential_expires_at: datetime | None = None,
) -> tuple[str, str]:
    """Consume one use of ``token`` and register a new agent with ``facts``, in one
    transaction. Returns ``(agent_id, credential)``; the credential is shown only here and
    expires at ``credential_expires_at`` (None: never; see ``server.services.rotation``).
    Raises Unauthenticated for an unknown, expired, used-up or revoked token."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        raise Unauthenticated(_REFUSALS[TokenRefusal.UNKNOWN])
    credential = new_credential()
    agent_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    refusal: TokenRefusal | None
    with unavailable_on_outage("enrollment"):
        async with sessions() as session, session.begin():
            refusal = await tokens_db.consume_token(session, secret_hash(token), now)
            if refusal is None:
                await _register(
                    session,
                    agent_id,
                    facts,
                    now,
                    credential,
                    checkin_interval_seconds,
                    credential_expires_at,
                )
    if refusal is not None:
        raise Unauthenticated(_REFUSALS[refusal])
    return agent_id, credential


async def _register(
    session: AsyncSession,
    agent_id: str,
    facts: HostFacts,
    now: datetime,
    credential: str,
    checkin_interval_seconds: int,
    credential_expires_at: datetime | None,
) -> None:
    await agents_db.create_agent(session, agent_id, facts, now, checkin_interval_seconds)
    await agents_db.store_credential(
        session, agent_id, secret_hash(credential), now, credential_expires_at
    )


class TokenState(StrEnum):
    """Whether a token can still enroll, and if not, why (revoked wins over the others)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    USED_UP = "used up"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class TokenSummary:
    """One enrollment token for ``token list``: its display prefix, never the token."""

    id: int
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    uses_left: int
    state: TokenState


def token_state(record: tokens_db.TokenRecord, now: datetime) -> TokenState:
    """The state of a stored token at ``now`` (the same rules ``consume_token`` applies)."""
    if record.revoked:
        return TokenState.REVOKED
    if record.uses_left <= 0:
        return TokenState.USED_UP
    if record.expires_at is not None and record.expires_at <= now:
        return TokenState.EXPIRED
    return TokenState.ACTIVE


async def list_tokens(sessions: async_sessionmaker[AsyncSession]) -> list[TokenSummary]:
    """Every enrollment token, newest first, with its derived state."""
    with unavailable_on_outage("list tokens"):
        async with sessions() as session:
            records = await tokens_db.list_tokens(session)
    now = datetime.now(UTC)
    return [
        TokenSummary(
            id=r.id,
            prefix=r.prefix,
            created_at=r.created_at,
            expires_at=r.expires_at,
            uses_left=r.uses_left,
            state=token_state(r, now),
        )
        for r in records
    ]


async def revoke_token(sessions: async_sessionmaker[AsyncSession], prefix_or_id: str) -> int:
    """Revoke the token with this display prefix (``fpt_`` + 8 characters, as ``token list``
    shows it) or row id; it can never enroll again. Returns how many tokens were revoked.
    Raises NotFound when no unrevoked token matches; a full token is refused (InvalidArgument)
    so that secrets are not typed where shells keep history."""
    key = prefix_or_id.strip()
    if key.startswith(TOKEN_PREFIX) and len(key) > DISPLAY_PREFIX_CHARS:
        raise InvalidArgument(
            f"give the {DISPLAY_PREFIX_CHARS}-character prefix shown by `token list`, "
            "not the whole token",
            field="token",
        )
    with unavailable_on_outage("revoke token"):
        async with sessions() as session, session.begin():
            if key.isdigit():
                count = await tokens_db.revoke_token_by_id(session, int(key))
            elif key.startswith(TOKEN_PREFIX) and len(key) == DISPLAY_PREFIX_CHARS:
                count = await tokens_db.revoke_token(session, key)
            else:
                raise InvalidArgument(
                    f"expected a token id or a prefix such as {TOKEN_PREFIX}AbCd1234", field="token"
                )
    if count == 0:
        raise NotFound(f"no unrevoked enrollment token {key}")
    return count
