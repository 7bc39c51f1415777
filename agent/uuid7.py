"""RFC 9562 UUID version 7: 48-bit Unix milliseconds, then randomness; sorts by creation time.

Within one millisecond a 12-bit counter in ``rand_a`` keeps ids strictly increasing in this
process (RFC 9562 §6.2, method 1); the counter starts at a random value below 2048 each new
millisecond and, if it overflows, the timestamp is advanced by one millisecond.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7(now_ns: int | None = None) -> uuid.UUID:
    """A new time-ordered UUIDv7 (monotonic within this process)."""
    global _last_ms, _counter
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    with _lock:
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)


def uuid7_str() -> str:
    """``str(uuid7())``: the canonical hyphenated lower-case form."""
    return str(uuid7())


def uuid7_millis(value: uuid.UUID) -> int:
    """The Unix timestamp in milliseconds embedded in a UUIDv7."""
    return value.int >> 80
