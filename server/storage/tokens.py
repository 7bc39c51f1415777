"""SQL for enrollment tokens. Only SHA-256 hashes of tokens are stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.models import EnrollmentToken


class TokenRefusal(StrEnum):
    """Why a token could not be consumed."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED_UP = "used_up"
    REVOKED = "revoked"


async def create_token(
    session: AsyncSession,
    token_hash: str,
    prefix: str,
    created_at: datetime,
    expires_at: datetime | None,
    uses: int,
) -> int:
    """Store a new token's hash; returns its row id."""
    row = EnrollmentToken(
        token_hash=token_hash,
        prefix=prefix,
        created_at=created_at,
        expires_at=expires_at,
        uses_left=uses,
        revoked=False,
    )
    session.add(row)
    await session.flush()
    return row.id


async def consume_token(
    session: AsyncSession, token_hash: str, now: datetime
) -> TokenRefusal | None:
    """Atomically take one use of the token (a single conditional UPDATE, so two concurrent
    enrollments can never both take the last use). Returns None on success, else the reason."""
    result = await session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.token_hash == token_hash,
            EnrollmentToken.uses_left > 0,
            EnrollmentToken.revoked.is_(False),
            or_(EnrollmentToken.expires_at.is_(None), EnrollmentToken.expires_at > now),
        )
        .values(uses_left=EnrollmentToken.uses_left - 1)
        .returning(EnrollmentToken.id)
        .execution_options(synchronize_session=False)
    )
    if result.first() is not None:
        return None
    row = (
        await session.execute(
            select(
                EnrollmentToken.revoked, EnrollmentToken.uses_left, EnrollmentToken.expires_at
            ).where(EnrollmentToken.token_hash == token_hash)
        )
    ).first()
    if row is None:
        return TokenRefusal.UNKNOWN
    if row.revoked:
        return TokenRefusal.REVOKED
    if row.uses_left <= 0:
        return TokenRefusal.USED_UP
    return TokenRefusal.EXPIRED


async def revoke_token(session: AsyncSession, prefix: str) -> int:
    """Revoke every token whose prefix is ``prefix``; returns how many."""
    return await _revoke(session, EnrollmentToken.prefix == prefix)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An enrollment token as listed to operators: never the token or its hash."""

    id: int
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    uses_left: int
    revoked: bool


async def list_tokens(session: AsyncSession) -> list[TokenRecord]:
    """Every enrollment token, newest first."""
    result = await session.execute(
        select(
            EnrollmentToken.id,
            EnrollmentToken.prefix,
            EnrollmentToken.created_at,
            EnrollmentToken.expires_at,
            EnrollmentToken.uses_left,
            EnrollmentToken.revoked,
        ).order_by(EnrollmentToken.created_at.desc(), EnrollmentToken.id.desc())
    )
    return [
        TokenRecord(
            id=row.id,
            prefix=row.prefix,
            created_at=row.created_at,
            expires_at=row.expires_at,
            uses_left=row.uses_left,
            revoked=bool(row.revoked),
        )
        for row in result
    ]


async def revoke_token_by_id(session: AsyncSession, token_id: int) -> int:
    """Revoke the token with row id ``token_id`` unless already revoked; returns 0 or 1."""
    return await _revoke(session, EnrollmentToken.id == token_id)


async def _revoke(session: AsyncSession, which: ColumnElement[bool]) -> int:
    """Revoke the not yet revoked tokens matching ``which``; returns how many."""
    result = await session.execute(
        update(EnrollmentToken)
        .where(which, EnrollmentToken.revoked.is_(False))
        .values(revoked=True)
        .returning(EnrollmentToken.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())
