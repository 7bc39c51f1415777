"""One module per config format; each parses text into a
:class:`~agent.specs.formats.base.Document` (``parse``) or makes one from plain data
(``from_data``, used by conversions). The TOML and YAML modules load their libraries only when
called."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.specs.formats import env, ini, json, kv, text, toml, yaml
from agent.specs.formats.base import Comment, Document

_PARSERS: dict[str, Callable[[str], Document]] = {
    "ini": ini.parse,
    "kv": kv.parse,
    "env": env.parse,
    "json": json.parse,
    "toml": toml.parse,
    "yaml": yaml.parse,
    "text": text.parse,
}
_BUILDERS: dict[str, Callable[[dict[str, Any]], Document]] = {
    "ini": ini.from_data,
    "kv": kv.from_data,
    "env": env.from_data,
    "json": json.from_data,
    "toml": toml.from_data,
    "yaml": yaml.from_data,
    "text": text.from_data,
}


def parse(format_name: str, source: str) -> Document:
    """``source`` parsed as ``format_name`` (raises FormatError)."""
    return _PARSERS[format_name](source)


def from_data(format_name: str, data: dict[str, Any]) -> Document:
    """A new document of ``format_name`` holding ``data`` (raises FormatError when the format
    cannot hold a value)."""
    return _BUILDERS[format_name](data)


__all__ = ["Comment", "Document", "from_data", "parse"]
