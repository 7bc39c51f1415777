"""Shared by the chaos tests (a uniquely named module: tests/ has no __init__ files).

Quick mode (the normal suite) or long mode (``FLAGPOST_CHAOS=long``, ``make chaos``, which runs
``pytest -m slow tests``): every chaos test is marked ``slow`` and scales itself by :data:`LONG`.
"""

from __future__ import annotations

import os
import socket

import pytest

LONG = os.environ.get("FLAGPOST_CHAOS", "").lower() == "long"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pick(quick: float, long: float) -> float:
    """The quick or the long figure, by mode."""
    return long if LONG else quick


def require_postgresql() -> None:
    """Skip (fail under CI=true) when PostgreSQL is not reachable on 127.0.0.1:5432."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), 2):
            return
    except OSError:
        if IN_CI:
            pytest.fail("PostgreSQL unreachable at 127.0.0.1:5432 (CI=true: required)")
        pytest.skip("PostgreSQL unreachable at 127.0.0.1:5432")


def databases(*, postgresql_in_quick_mode: bool = False) -> list[object]:
    """SQLite always; PostgreSQL in long mode (or always, when it is cheap enough)."""
    skip = pytest.mark.skipif(
        not (LONG or postgresql_in_quick_mode),
        reason="PostgreSQL variant runs in long mode (FLAGPOST_CHAOS=long)",
    )
    return ["sqlite", pytest.param("postgresql", marks=skip)]
