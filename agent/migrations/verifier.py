"""Secret verifiers: a salted scrypt hash the old config stores instead of a secret.

Format: ``scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>`` (standard base64, 32-byte hash,
stdlib :func:`hashlib.scrypt`). The built-in chain checks the database password and upstream
token an admin types against the verifiers of the legacy config (see
:mod:`agent.specs.builtin`).

Make one (the secret is read from standard input, never from the command line, so it stays out
of shell history and ``ps``)::

    printf '%s' 'the password' | python -m agent.migrations.verifier
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import AgentError

SCHEME = "scrypt"
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1
HASH_BYTES = 32
MAX_N = 2**20
MAX_R = 32
MAX_P = 16


class VerifierError(AgentError, ValueError):
    """A verifier string is malformed (the message says what, never shows the string)."""


@dataclass(frozen=True, slots=True)
class Verifier:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def matches(self, secret: str) -> bool:
        """True when ``secret`` is the one this verifier was made from (constant time)."""
        candidate = _scrypt(secret, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=size, maxmem=256 * n * r + 2**20
    )


def make_verifier(
    secret: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """A new verifier for ``secret`` (random 16-byte salt)."""
    salt = os.urandom(16)
    digest = _scrypt(secret, salt, n, r, p, HASH_BYTES)
    encode = base64.b64encode
    return f"{SCHEME}${n}${r}${p}${encode(salt).decode()}${encode(digest).decode()}"


def parse_verifier(text: str) -> Verifier:
    """Parse a verifier; raises :class:`VerifierError` naming what is wrong."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise VerifierError("expected scrypt$n$r$p$salt$hash")
    try:
        n, r, p = (int(part) for part in parts[1:4])
    except ValueError:
        raise VerifierError("n, r and p must be integers") from None
    if n < 2 or n > MAX_N or n & (n - 1):
        raise VerifierError(f"n must be a power of 2 from 2 to {MAX_N}")
    if not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise VerifierError(f"r must be 1 to {MAX_R} and p 1 to {MAX_P}")
    try:
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        raise VerifierError("salt and hash must be base64") from None
    if not salt or not 16 <= len(digest) <= 64:
        raise VerifierError("the salt must not be empty and the hash must be 16 to 64 bytes")
    return Verifier(n, r, p, salt, digest)


def check_verifier(text: str, secret: str) -> bool:
    """True when ``secret`` matches the verifier ``text`` (False for a malformed verifier)."""
    try:
        return parse_verifier(text).matches(secret)
    except VerifierError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Read a secret from standard input (one line; the final newline is dropped) and print its
    verifier."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print(
            "usage: printf '%s' SECRET | python -m agent.migrations.verifier\n"
            "(the secret is read from standard input)",
            file=sys.stderr,
        )
        return 2
    secret = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not secret:
        print("verifier: empty secret on standard input", file=sys.stderr)
        return 1
    print(make_verifier(secret))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
