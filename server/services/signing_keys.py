"""Start-up check of the server signing key against the database's registry.

Every replica sharing a database must sign with the same key, because agents pinned the public
key when they enrolled at whichever replica answered. The first server registers its key; any
later server with a different key refuses to start (ConfigError naming both key ids and the fix).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.errors import ConfigError
from server.services.health import unavailable_on_outage
from server.signing import ActionSigner
from server.storage import signing_keys as keys_db


def _mismatch(signer: ActionSigner, registered: keys_db.SigningKeyRecord) -> ConfigError:
    return ConfigError(
        f"server signing key mismatch: this server's key {signer.path} has key id "
        f"{signer.key_id}, but the database is used with key id {registered.key_id} "
        f"(registered {registered.created_at.isoformat()}). Replicas sharing a database must "
        "share one key: copy signing-key.pem (mode 0600) from the state_dir of a server that "
        "already uses this database into this server's state_dir, then start again"
    )


async def register(sessions: async_sessionmaker[AsyncSession], signer: ActionSigner) -> None:
    """Register ``signer``'s public key if the database has none; ConfigError when the
    database already holds a different key. Two servers registering at the same moment: the
    older registration wins and the other refuses to start."""
    with unavailable_on_outage("signing key registration"):
        async with sessions() as session, session.begin():
            registered = await keys_db.list_keys(session)
            if any(r.key_id == signer.key_id for r in registered):
                others = [r for r in registered if r.key_id != signer.key_id]
                if not others:
                    return
                raise _mismatch(signer, others[0])
            if registered:
                raise _mismatch(signer, registered[0])
            await keys_db.add_key(
                session, signer.key_id, signer.public_key_bytes().hex(), datetime.now(UTC)
            )
        async with sessions() as session, session.begin():
            registered = await keys_db.list_keys(session)
            first = min(registered, key=lambda r: (r.created_at, r.key_id))
            if first.key_id != signer.key_id:
                await keys_db.remove_key(session, signer.key_id)
                raise _mismatch(signer, first)
