"""``kv``: ``key = value`` lines without sections (the legacy agent config), ``#`` comments on
their own lines. Values are text; the key is the whole name (dots included)."""

from __future__ import annotations

from typing import Any

from agent.specs.formats.lines import IniLikeSyntax, LinesDocument, from_flat

SYNTAX = IniLikeSyntax("kv", sections=False, colon=False, marks=("#",))


def parse(text: str) -> LinesDocument:
    """The kv document in ``text`` (:class:`FormatError` with the line when malformed)."""
    return LinesDocument(SYNTAX, text)


def from_data(data: dict[str, Any]) -> LinesDocument:
    """A new kv file: nested tables become dotted keys."""
    return from_flat(SYNTAX, data)
