"""``ini``: ``[section]`` headers and ``key = value`` (or ``key: value``) lines, ``#`` and ``;``
comments on their own lines. Values are text. Key ``section.key``."""

from __future__ import annotations

from typing import Any

from agent.specs.errors import FormatError
from agent.specs.formats.lines import IniLikeSyntax, LinesDocument, from_flat
from agent.specs.values import flatten

SYNTAX = IniLikeSyntax("ini", sections=True, colon=True, marks=("#", ";"))


def parse(text: str) -> LinesDocument:
    """The INI document in ``text`` (:class:`FormatError` with the line when malformed)."""
    return LinesDocument(SYNTAX, text)


def from_data(data: dict[str, Any]) -> LinesDocument:
    """A new INI file holding ``data``: top-level tables become sections (nested ones dotted
    sections), values text."""
    for key, value in flatten(data):
        if not isinstance(value, dict) and "." not in key:
            raise FormatError(f"key {key!r}: an ini file holds keys only inside sections")
    return from_flat(SYNTAX, data)
