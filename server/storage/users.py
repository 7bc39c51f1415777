"""SQL for web users and their sessions.

Users keep only an argon2id hash of their password; sessions only a SHA-256 hex digest of the
(256-bit random) cookie value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.storage.models import WebSession, WebUser


@dataclass(frozen=True)
class UserRecord:
    """A web user as the service layer sees it."""

    id: int
    name: str
    password_hash: str
    role: str
    created_at: datetime
    disabled: bool


def _record(row: WebUser) -> UserRecord:
    return UserRecord(
        id=row.id,
        name=row.name,
        password_hash=row.password_hash,
        role=row.role,
        created_at=row.created_at,
        disabled=row.disabled,
    )


async def create_user(
    session: AsyncSession, name: str, password_hash: str, role: str, created_at: datetime
) -> int:
    """Insert a user; returns its id (IntegrityError when the name is taken)."""
    row = WebUser(
        name=name, password_hash=password_hash, role=role, created_at=created_at, disabled=False
    )
    session.add(row)
    await session.flush()
    return row.id


async def get_user(session: AsyncSession, name: str) -> UserRecord | None:
    """The user called ``name``, or None."""
    row = (await session.execute(select(WebUser).where(WebUser.name == name))).scalar_one_or_none()
    return None if row is None else _record(row)


async def list_users(session: AsyncSession) -> list[UserRecord]:
    """Every user, by name."""
    rows = (await session.execute(select(WebUser).order_by(WebUser.name))).scalars()
    return [_record(row) for row in rows]


async def delete_user(session: AsyncSession, name: str) -> bool:
    """Delete the user (its sessions go with it); False when there was none."""
    user_id = (
        await session.execute(select(WebUser.id).where(WebUser.name == name))
    ).scalar_one_or_none()
    if user_id is None:
        return False
    await session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    await session.execute(delete(WebUser).where(WebUser.id == user_id))
    return True


async def set_password_hash(session: AsyncSession, user_id: int, password_hash: str) -> None:
    """Replace a user's password hash (a rehash with new parameters)."""
    await session.execute(
        update(WebUser).where(WebUser.id == user_id).values(password_hash=password_hash)
    )


async def set_disabled(session: AsyncSession, name: str, disabled: bool) -> bool:
    """Disable or enable a user; a disabled user's sessions are deleted. False: no such user."""
    user_id = (
        await session.execute(select(WebUser.id).where(WebUser.name == name))
    ).scalar_one_or_none()
    if user_id is None:
        return False
    await session.execute(update(WebUser).where(WebUser.id == user_id).values(disabled=disabled))
    if disabled:
        await session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    return True


async def create_session(
    session: AsyncSession, token_hash: str, user_id: int, created_at: datetime, expires_at: datetime
) -> None:
    """Store a new session (only the hash of its cookie value)."""
    session.add(
        WebSession(
            token_hash=token_hash, user_id=user_id, created_at=created_at, expires_at=expires_at
        )
    )
    await session.flush()


async def session_user(
    session: AsyncSession, token_hash: str, now: datetime
) -> tuple[str, str] | None:
    """(name, role) of the enabled user owning the unexpired session ``token_hash``, or None."""
    row = (
        await session.execute(
            select(WebUser.name, WebUser.role)
            .join(WebSession, WebSession.user_id == WebUser.id)
            .where(
                WebSession.token_hash == token_hash,
                WebSession.expires_at > now,
                WebUser.disabled.is_(False),
            )
        )
    ).first()
    return None if row is None else (row.name, row.role)


async def delete_session(session: AsyncSession, token_hash: str) -> bool:
    """Delete one session; False when it did not exist."""
    result = await session.execute(
        delete(WebSession)
        .where(WebSession.token_hash == token_hash)
        .returning(WebSession.token_hash)
    )
    return result.first() is not None


async def delete_expired_sessions(session: AsyncSession, now: datetime) -> int:
    """Delete every session that expired by ``now``; returns how many."""
    result = await session.execute(
        delete(WebSession).where(WebSession.expires_at <= now).returning(WebSession.token_hash)
    )
    return len(result.all())


async def count_sessions(session: AsyncSession, name: str) -> int:
    """How many sessions (expired or not) user ``name`` has."""
    rows = await session.execute(
        select(WebSession.token_hash)
        .join(WebUser, WebSession.user_id == WebUser.id)
        .where(WebUser.name == name)
    )
    return len(rows.all())
