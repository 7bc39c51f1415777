"""``json``: an object, read and written with the standard library; key order is kept,
written back with two-space indentation. JSON has no comments."""

from __future__ import annotations

import copy
import json
from collections.abc import MutableMapping
from typing import Any

from agent.specs.errors import FormatError
from agent.specs.formats.base import Comment
from agent.specs.formats.tree import TreeDocument


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


class JsonDocument(TreeDocument):
    format = "json"

    def new_table(self) -> MutableMapping[str, Any]:
        return {}

    def plain(self, value: Any) -> Any:
        return copy.deepcopy(value)

    def wrap(self, value: Any) -> Any:
        return copy.deepcopy(value)

    def comments(self) -> list[Comment]:
        return []

    def dump(self) -> str:
        return json.dumps(self.root, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def parse(text: str) -> JsonDocument:
    """The JSON object in ``text`` (:class:`FormatError` with the line when malformed)."""
    try:
        root = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise FormatError(exc.msg, exc.lineno) from None
    if not isinstance(root, dict):
        raise FormatError("the document must be a JSON object", 1)
    return JsonDocument(root, text)


def from_data(data: dict[str, Any]) -> JsonDocument:
    """A new JSON document holding ``data``."""
    return JsonDocument(copy.deepcopy(data))
