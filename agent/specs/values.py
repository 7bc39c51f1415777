"""Values of config keys: typing text values (``types = { "server.port" = "int" }``), checking
types, and nesting dotted keys.

Untyped formats (``ini``, ``kv``, ``env``) hold every value as text; a conversion into a typed
format types each value named in ``types`` (the others stay strings). Error messages name keys
and types, never values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from agent.specs.errors import FormatError

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|nan)")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def has_type(value: Any, type_name: str) -> bool:
    """Whether the typed ``value`` is of the spec type ``type_name``."""
    if type_name == "str":
        return isinstance(value, str)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, float | int) and not isinstance(value, bool)
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "list":
        return isinstance(value, list)
    if type_name == "table":
        return isinstance(value, Mapping)
    raise ValueError(f"unknown type {type_name!r}")


def coerce(key: str, value: Any, type_name: str) -> Any:
    """``value`` as ``type_name``: text is parsed (``"8080"`` -> 8080, ``"yes"`` -> True,
    ``list``/``table`` from a JSON literal); a value already of the type is kept. Raises
    :class:`FormatError` naming ``key`` when it cannot be."""
    if has_type(value, type_name):
        return float(value) if type_name == "float" else value
    if isinstance(value, str):
        text = value.strip()
        if type_name == "int" and _INT.fullmatch(text):
            return int(text)
        if type_name == "float" and _FLOAT.fullmatch(text.lower()):
            return float(text)
        if type_name == "bool" and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        if type_name in ("list", "table"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if has_type(parsed, type_name):
                return parsed
    raise FormatError(f"key {key!r}: the value is not {_article(type_name)}")


def _article(type_name: str) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "list": "an array",
        "table": "a table",
    }[type_name]


def to_text(key: str, value: Any) -> str:
    """A scalar as an untyped format writes it (``True`` -> ``true``); refuses arrays, tables
    and null with :class:`FormatError` naming ``key``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    kind = "null" if value is None else "an array" if isinstance(value, list) else "a table"
    raise FormatError(f"key {key!r}: this format holds only text values, not {kind}")


def nest(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``[("a.b", 1), ("c", 2)]`` -> ``{"a": {"b": 1}, "c": 2}``; a key that is both a value and
    a table is a :class:`FormatError`."""
    result: dict[str, Any] = {}
    for key, value in items:
        parts = key.split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormatError(f"key {key!r}: {part!r} is both a value and a table")
            node = child
        if parts[-1] in node:
            raise FormatError(f"key {key!r}: defined twice")
        node[parts[-1]] = value
    return result


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The leaves of nested tables as ``(dotted key, value)``, in order (an empty table is a
    leaf)."""
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            items.extend(flatten(value, dotted))
        else:
            items.append((dotted, value))
    return items
