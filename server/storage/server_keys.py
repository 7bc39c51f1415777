"""SQL for the registry of the keys server replicas must share (``server_keys``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.models import ServerKey


@dataclass(frozen=True, slots=True)
class ServerKeyRecord:
    """The registered key of one purpose."""

    purpose: str
    key_id: str
    public_key: str
    created_at: datetime


async def get_key(session: AsyncSession, purpose: str) -> ServerKeyRecord | None:
    """The key registered for ``purpose``, or None."""
    row = await session.get(ServerKey, purpose)
    if row is None:
        return None
    return ServerKeyRecord(row.purpose, row.key_id, row.public_key, row.created_at)


async def add_key(
    session: AsyncSession, purpose: str, key_id: str, public_key: str, at: datetime
) -> None:
    """Register the key of ``purpose`` (IntegrityError when another server just did)."""
    session.add(ServerKey(purpose=purpose, key_id=key_id, public_key=public_key, created_at=at))
    await session.flush()
