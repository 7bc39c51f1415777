"""SQL for the registry of server signing keys (``signing_keys``): the public halves in use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.models import SigningKey


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """One registered public key."""

    key_id: str
    public_key: str  # hex of the raw 32 bytes
    created_at: datetime


async def list_keys(session: AsyncSession) -> list[SigningKeyRecord]:
    """Every registered key, oldest first."""
    result = await session.execute(select(SigningKey).order_by(SigningKey.created_at))
    return [SigningKeyRecord(r.key_id, r.public_key, r.created_at) for r in result.scalars()]


async def add_key(session: AsyncSession, key_id: str, public_key: str, at: datetime) -> None:
    """Register a public key."""
    session.add(SigningKey(key_id=key_id, public_key=public_key, created_at=at))
    await session.flush()


async def remove_key(session: AsyncSession, key_id: str) -> None:
    """Unregister a key (a replica that lost the race to register first)."""
    await session.execute(delete(SigningKey).where(SigningKey.key_id == key_id))
