"""``yaml``: edited with ruamel.yaml in round-trip mode, which keeps comments, order and
quoting. The document must be a mapping.

ruamel.yaml is imported inside the functions only (see :mod:`agent.specs.formats.toml`)."""

from __future__ import annotations

import io
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from agent.specs.errors import FormatError
from agent.specs.formats.tree import TreeDocument

if TYPE_CHECKING:
    from ruamel.yaml import YAML


def _yaml() -> YAML:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


class YamlDocument(TreeDocument):
    format = "yaml"

    def new_table(self) -> MutableMapping[str, Any]:
        from ruamel.yaml.comments import CommentedMap

        return CommentedMap()

    def plain(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(key): self.plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.plain(item) for item in value]
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        return value

    def wrap(self, value: Any) -> Any:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        if isinstance(value, dict):
            table = CommentedMap()
            for key, item in value.items():
                table[key] = self.wrap(item)
            return table
        if isinstance(value, list):
            return CommentedSeq([self.wrap(item) for item in value])
        return value

    def rename_in(self, table: MutableMapping[str, Any], old: str, new: str) -> None:
        from ruamel.yaml.comments import CommentedMap

        if not isinstance(table, CommentedMap):
            super().rename_in(table, old, new)
            return
        position = list(table.keys()).index(old)
        comment = table.ca.items.pop(old, None)
        value = table.pop(old)
        table.insert(position, new, value)
        if comment is not None:
            table.ca.items[new] = comment

    def dump(self) -> str:
        stream = io.StringIO()
        _yaml().dump(self.root, stream)
        return stream.getvalue()


def parse(text: str) -> YamlDocument:
    """The YAML mapping in ``text`` (:class:`FormatError` with the line when malformed)."""
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    try:
        root = _yaml().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise FormatError(f"not valid YAML: {problem}", line) from None
    if root is None:
        root = CommentedMap()
    if not isinstance(root, CommentedMap):
        raise FormatError("the document must be a mapping", 1)
    return YamlDocument(root, text)


def from_data(data: dict[str, Any]) -> YamlDocument:
    """A new YAML document holding ``data``."""
    holder = YamlDocument({})
    root = holder.wrap(data)
    holder.root = root
    return holder
