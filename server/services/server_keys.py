"""Start-up check of the keys in ``state_dir`` against the database's registry.

Replicas sharing a database must hold the same keys: the signing key, because agents pinned its
public half when they enrolled at whichever replica answered; the input key, because answers
encrypted by one replica are delivered by another. The first server registers each key (one row
per purpose, so of two servers registering at the same moment exactly one insert wins); a server
whose key differs from the registered one refuses to start with a ConfigError naming both key
ids, the file and the fix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.errors import ConfigError
from server.services.health import unavailable_on_outage
from server.storage import server_keys as keys_db


def _mismatch(
    purpose: str, path: Path, key_id: str, registered: keys_db.ServerKeyRecord
) -> ConfigError:
    return ConfigError(
        f"server {purpose} key mismatch: this server's key {path} has key id {key_id}, but the "
        f"database is used with key id {registered.key_id} (registered "
        f"{registered.created_at.isoformat()}). Replicas sharing a database must share one key: "
        f"copy {path.name} (mode 0600) from the state_dir of a server that already uses this "
        "database into this server's state_dir, then start again"
    )


async def register(
    sessions: async_sessionmaker[AsyncSession],
    purpose: str,
    path: Path,
    key_id: str,
    public_key: str = "",
) -> None:
    """Register the key of ``purpose`` (held in ``path``) if the database has none; ConfigError
    when the database already holds a different one."""
    with unavailable_on_outage(f"{purpose} key registration"):
        for _ in range(2):  # a concurrent first registration: read the winner and compare
            try:
                async with sessions() as session, session.begin():
                    registered = await keys_db.get_key(session, purpose)
                    if registered is None:
                        await keys_db.add_key(
                            session, purpose, key_id, public_key, datetime.now(UTC)
                        )
                        return
            except IntegrityError:
                continue
            if registered.key_id != key_id:
                raise _mismatch(purpose, path, key_id, registered)
            return
    raise ConfigError(f"could not register the server {purpose} key; start again")
