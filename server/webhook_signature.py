"""The ``Flagpost-Signature`` header of a webhook delivery, and its check (for receivers and
tests).

    Flagpost-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>

``secret`` is the webhook's secret as UTF-8, ``body`` the exact bytes of the request body. A
receiver recomputes the HMAC, compares in constant time, and rejects a ``t`` more than
:data:`REPLAY_WINDOW_SECONDS` (5 minutes) away from its clock: a captured request cannot be
replayed later. Each attempt is signed afresh (a retry carries a new ``t``).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Flagpost-Signature"
REPLAY_WINDOW_SECONDS = 300


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    now: float | None = None,
    window: int = REPLAY_WINDOW_SECONDS,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within ``window``
    seconds of ``now``."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - t) > window:
        return False
    expected = _mac(secret, t, body)
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))
