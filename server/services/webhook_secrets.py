"""Webhook signing secrets: generated, encrypted at rest, decrypted to sign.

The same mechanism as input answers (``server.services.inputs``): Fernet under the server's
``<state_dir>/inputs.key`` (created 0600 on first use; an unsafe key file is refused). The
plaintext binds the secret to its webhook id, checked on decryption, so a ciphertext copied
to another row does not sign for it. The CLI (``flagpost-server webhook add``) must see the
same state directory as the server, as replicas must share the key file.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from server.config import ServerConfig
from server.errors import ConfigError, InvalidArgument
from server.services.inputs import KEY_FILE, load_or_create_key

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
MIN_SECRET = 16
MAX_SECRET = 256


def generate_secret() -> str:
    """A new random secret (256 bits), shown to the admin once."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_secret(secret: str) -> str:
    """A given secret: InvalidArgument (field ``secret``) unless 16 to 256 printable ASCII
    characters without spaces."""
    if not MIN_SECRET <= len(secret) <= MAX_SECRET or not all(33 <= ord(c) < 127 for c in secret):
        raise InvalidArgument(
            f"must be {MIN_SECRET} to {MAX_SECRET} printable ASCII characters without spaces",
            field="secret",
        )
    return secret


class SecretBox:
    """Encrypts and decrypts webhook secrets with the inputs key."""

    def __init__(self, key: bytes, path: Path) -> None:
        self._fernet = Fernet(key)
        self.path = path

    @classmethod
    def open(cls, config: ServerConfig) -> SecretBox:
        """Load (or on first use create) ``<state_dir>/inputs.key``; ConfigError when unsafe."""
        path = config.state_dir / KEY_FILE
        return cls(load_or_create_key(path), path)

    def encrypt(self, webhook_id: str, secret: str) -> bytes:
        plaintext = json.dumps({"webhook_id": webhook_id, "secret": secret}).encode("utf-8")
        return self._fernet.encrypt(plaintext)

    def decrypt(self, webhook_id: str, ciphertext: bytes) -> str:
        """The secret; ConfigError when the key cannot decrypt it (the key file was replaced)
        or it belongs to another webhook."""
        try:
            data = json.loads(self._fernet.decrypt(bytes(ciphertext)))
        except (InvalidToken, ValueError):
            raise ConfigError(
                f"webhook {webhook_id}: its secret cannot be decrypted with {self.path} (was "
                "the key file replaced?); remove the webhook and add it again"
            ) from None
        if data.get("webhook_id") != webhook_id:
            raise ConfigError(f"webhook {webhook_id}: its stored secret belongs to another one")
        return str(data["secret"])
