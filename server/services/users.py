"""Web users and their sessions.

Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher``, its RFC 9106 defaults);
a hash made with older parameters is replaced at the next successful login. Verifying an
unknown user's password still hashes (against a dummy hash), so the time taken does not tell
whether the user exists, and every refusal has the same message. Hashing runs in a worker
thread: it takes tens of milliseconds and must not stall the event loop.

A session is a 256-bit random cookie value; the database keeps only its SHA-256 hex digest,
with an expiry ``session_ttl_hours`` ahead. Logging out deletes it; expired sessions are
refused and deleted at the next login.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.errors import Conflict, InvalidArgument, NotFound, Unauthenticated
from server.services.health import unavailable_on_outage
from server.storage import users as users_db

NAME_MAX: Final = 64
PASSWORD_MIN: Final = 8
PASSWORD_MAX: Final = 1024  # argon2 takes any length; a bound keeps a login request cheap
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_SESSION_BYTES: Final = 32  # 256 bits
LOGIN_REFUSED: Final = "wrong user name or password"

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile


class Role(StrEnum):
    """What a web user may do: an admin may also act (cancel, request runs, give input)."""

    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class WebUser:
    """A logged-in user, as the web sees it."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True, slots=True)
class UserSummary:
    """One user for ``user list`` (never the hash)."""

    name: str
    role: Role
    created_at: datetime
    disabled: bool


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login: the session cookie value (shown only here) and its expiry."""

    token: str
    user: WebUser
    expires_at: datetime


def session_hash(token: str) -> str:
    """SHA-256 hex of a session cookie value: the only form a session is stored in."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_name(name: str) -> str:
    """A user name: 1-64 characters, letters, digits and ``._@-``, starting alphanumeric."""
    if not name:
        raise InvalidArgument("must not be empty", field="name")
    if len(name) > NAME_MAX:
        raise InvalidArgument(f"at most {NAME_MAX} characters", field="name")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            "letters, digits and . _ @ - only, starting with a letter or digit", field="name"
        )
    return name


def validate_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidArgument("must be admin or viewer", field="role") from None


def validate_password(password: str) -> str:
    if len(password) < PASSWORD_MIN:
        raise InvalidArgument(f"at least {PASSWORD_MIN} characters", field="password")
    if len(password) > PASSWORD_MAX:
        raise InvalidArgument(f"at most {PASSWORD_MAX} characters", field="password")
    return password


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


async def warm_up() -> str:
    """The dummy hash an unknown user's login is verified against, made (once, ~0.1 s) in a
    worker thread. The web app calls this at start-up, so the first unknown-user login is
    neither slower than the others (a hint that the user does not exist) nor blocks the loop."""
    return await asyncio.to_thread(_dummy_hash)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def create_user(
    sessions: async_sessionmaker[AsyncSession], name: str, password: str, role: str
) -> WebUser:
    """Create a user with an argon2id hash of ``password``. Conflict when the name is taken."""
    validate_name(name)
    user_role = validate_role(role)
    validate_password(password)
    password_hash = await asyncio.to_thread(_hasher.hash, password)
    try:
        with unavailable_on_outage("create user"):
            async with sessions() as session, session.begin():
                await users_db.create_user(
                    session, name, password_hash, user_role.value, datetime.now(UTC)
                )
    except IntegrityError:
        raise Conflict(f"a user named {name!r} already exists") from None
    return WebUser(name=name, role=user_role)


async def list_users(sessions: async_sessionmaker[AsyncSession]) -> list[UserSummary]:
    """Every user, by name."""
    with unavailable_on_outage("list users"):
        async with sessions() as session:
            records = await users_db.list_users(session)
    return [
        UserSummary(name=r.name, role=Role(r.role), created_at=r.created_at, disabled=r.disabled)
        for r in records
    ]


async def delete_user(sessions: async_sessionmaker[AsyncSession], name: str) -> None:
    """Delete a user and its sessions. NotFound when there is none."""
    with unavailable_on_outage("delete user"):
        async with sessions() as session, session.begin():
            found = await users_db.delete_user(session, name)
    if not found:
        raise NotFound(f"no user named {name!r}")


async def set_disabled(
    sessions: async_sessionmaker[AsyncSession], name: str, disabled: bool = True
) -> None:
    """Disable (or re-enable) a user; disabling ends its sessions. NotFound when there is none."""
    with unavailable_on_outage("disable user"):
        async with sessions() as session, session.begin():
            found = await users_db.set_disabled(session, name, disabled)
    if not found:
        raise NotFound(f"no user named {name!r}")


async def login(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    password: str,
    ttl: timedelta,
) -> Login:
    """Check ``password`` and open a session lasting ``ttl``. Unauthenticated (one message for
    every reason: unknown user, wrong password, disabled user) otherwise."""
    if not name or len(name) > NAME_MAX or len(password) > PASSWORD_MAX:
        await asyncio.to_thread(_verify, await warm_up(), password[:PASSWORD_MAX])
        raise Unauthenticated(LOGIN_REFUSED)
    with unavailable_on_outage("login"):
        async with sessions() as session:
            record = await users_db.get_user(session, name)
    stored = record.password_hash if record is not None else await warm_up()
    ok = await asyncio.to_thread(_verify, stored, password)
    if record is None or not ok or record.disabled:
        raise Unauthenticated(LOGIN_REFUSED)
    new_hash = None
    if _hasher.check_needs_rehash(record.password_hash):
        new_hash = await asyncio.to_thread(_hasher.hash, password)
    token = secrets.token_urlsafe(_SESSION_BYTES)
    now = datetime.now(UTC)
    expires_at = now + ttl
    with unavailable_on_outage("login"):
        async with sessions() as session, session.begin():
            await users_db.delete_expired_sessions(session, now)
            if new_hash is not None:
                await users_db.set_password_hash(session, record.id, new_hash)
            await users_db.create_session(session, session_hash(token), record.id, now, expires_at)
    return Login(
        token=token, user=WebUser(name=record.name, role=Role(record.role)), expires_at=expires_at
    )


async def resolve_session(sessions: async_sessionmaker[AsyncSession], token: str) -> WebUser | None:
    """The user of an unexpired session whose cookie value is ``token`` (None: no session,
    expired, or the user was disabled or deleted)."""
    if not token or len(token) > 128:
        return None
    with unavailable_on_outage("session lookup"):
        async with sessions() as session:
            found = await users_db.session_user(session, session_hash(token), datetime.now(UTC))
    if found is None:
        return None
    name, role = found
    return WebUser(name=name, role=Role(role))


async def logout(sessions: async_sessionmaker[AsyncSession], token: str) -> bool:
    """Delete the session (server side): its cookie value is worthless afterwards."""
    with unavailable_on_outage("logout"):
        async with sessions() as session, session.begin():
            return await users_db.delete_session(session, session_hash(token))
