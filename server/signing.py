"""The server's Ed25519 signing key: every action sent to an agent is signed with it.

The key lives in ``<state_dir>/signing-key.pem`` (PKCS8 PEM, unencrypted). It is created on the
first start, crash-safely and with mode 0600 from the first byte (``server.keyfiles``), and
loaded on every later start. A key file that group or others can read, or an empty one, is
refused: the server does not start and says which file and how to fix it.

Agents pin the public half at enrollment (``EnrollResponse.server_signing_key``), so the key
must outlive restarts, and replicas sharing one database must share the file (see
``server.services.server_keys``: a server whose key differs from the registered one refuses to
start).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server import keyfiles
from server.errors import ConfigError

KEY_FILE_NAME = "signing-key.pem"


def key_id_of(public_key: bytes) -> str:
    """SHA-256 hex of a raw 32-byte public key: how keys are named in errors and the database."""
    return hashlib.sha256(public_key).hexdigest()


class ActionSigner:
    """Signs action bodies with the server's Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = private_key
        self.path = path
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id_of(self._public)

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key (what agents pin)."""
        return self._public

    def sign(self, body: bytes) -> bytes:
        """The 64-byte Ed25519 signature over exactly ``body``."""
        return self._key.sign(body)

    def __repr__(self) -> str:
        return f"ActionSigner(key_id={self.key_id[:16]}…, path={self.path})"


def _generate() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_or_create(state_dir: Path) -> ActionSigner:
    """The signing key of ``state_dir`` (created on first use, see the module docstring).
    Raises ConfigError for a key file readable by others, empty or not holding an Ed25519
    key."""
    path = state_dir / KEY_FILE_NAME
    pem = keyfiles.load_or_create(
        path,
        "the server signing key",
        _generate,
        "agents pinned the old key at enrollment: every agent must be enrolled again",
    )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the server signing key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return ActionSigner(key, path)
