"""Redaction of secret values: every spelling of each secret value (as it is, JSON-escaped,
env-quoted) is replaced by ``********`` in any text the planner shows (diffs, descriptions,
notes)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MASK = "********"


class Secrets:
    """The secret values met while planning; never shown, only used to redact."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def __repr__(self) -> str:
        return f"Secrets({len(self._values)} values)"

    def add(self, value: Any) -> None:
        """Remember ``value`` (every leaf of an array or table) as secret."""
        if isinstance(value, dict):
            for item in value.values():
                self.add(item)
            return
        if isinstance(value, list):
            for item in value:
                self.add(item)
            return
        if value is None or isinstance(value, bool):
            return
        text = str(value)
        if not text:
            return
        self._values.add(text)
        self._values.add(json.dumps(text)[1:-1])
        escaped = "".join("\\" + c if c in '"\\$`' else "\\n" if c == "\n" else c for c in text)
        self._values.add(escaped)

    def add_all(self, values: Iterable[Any]) -> None:
        for value in values:
            self.add(value)

    def redact(self, text: str) -> str:
        """``text`` with every secret value masked (longest first, so no part of one leaks)."""
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return text
