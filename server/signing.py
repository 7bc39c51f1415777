"""The server's Ed25519 signing key: every action sent to an agent is signed with it.

The key lives in ``<state_dir>/signing-key.pem`` (PKCS8 PEM, unencrypted). It is created on the
first start with ``O_CREAT | O_EXCL`` and mode 0600 (never readable by anyone else, not even
briefly), and loaded on every later start. A key file that group or others can read is refused:
the server does not start and says which file and how to fix it.

Agents pin the public half at enrollment (``EnrollResponse.server_signing_key``), so the key
must outlive restarts, and replicas sharing one database must share the file (see
``server.services.server_keys``: a server whose key differs from the registered one refuses to
start).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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

    def verify(self, body: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature over ``body``."""
        try:
            Ed25519PublicKey.from_public_bytes(self._public).verify(signature, body)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"ActionSigner(key_id={self.key_id[:16]}…, path={self.path})"


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: the server signing key is readable by group or others (mode {mode:04o}); "
            f"restrict it with `chmod 600 {path}` (and check who may have copied it)"
        )


def _create(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_or_create(state_dir: Path) -> ActionSigner:
    """The signing key of ``state_dir`` (created on first use, see the module docstring).
    Raises ConfigError for a key file readable by others or not holding an Ed25519 key."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / KEY_FILE_NAME
    try:
        return ActionSigner(_create(path), path)
    except FileExistsError:
        pass  # the normal case after the first start: load it
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the server signing key: {exc}") from exc
    _check_private(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the server signing key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return ActionSigner(key, path)
