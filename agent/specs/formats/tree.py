"""Dotted-key editing of nested mappings, shared by the typed formats (``json``, ``toml``,
``yaml``): each keeps its own round-trip tree (dicts, tomlkit containers, ruamel maps) and
provides how to make a table, rename in place, turn the tree into plain data and dump it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, MutableMapping
from typing import Any

from agent.specs.errors import FormatError
from agent.specs.formats.base import Comment, Document, parent_and_leaf
from agent.specs.formats.lines import split_lines


class TreeDocument(Document):
    """A document whose root is a mutable mapping of nested mappings."""

    typed = True

    def __init__(self, root: MutableMapping[str, Any], source: str = "") -> None:
        self.root = root
        self.source = source

    @abstractmethod
    def new_table(self) -> MutableMapping[str, Any]:
        """An empty table of this format's tree."""

    @abstractmethod
    def plain(self, value: Any) -> Any:
        """A value of the tree as plain Python data."""

    def wrap(self, value: Any) -> Any:
        """A plain value as the tree stores it."""
        return value

    def rename_in(self, table: MutableMapping[str, Any], old: str, new: str) -> None:
        """Rename ``old`` to ``new`` in ``table``, keeping its position."""
        items = list(table.items())
        for key, _value in items:
            del table[key]
        for key, value in items:
            table[new if key == old else key] = value

    def _table(self, key: str, *, create: bool) -> MutableMapping[str, Any]:
        """The table holding ``key`` (created with ``create``)."""
        parent, _leaf = parent_and_leaf(key)
        node = self.root
        if not parent:
            return node
        walked = ""
        for part in parent.split("."):
            walked = f"{walked}.{part}" if walked else part
            if part not in node:
                if not create:
                    raise KeyError(key)
                node[part] = self.new_table()
            child = node[part]
            if not isinstance(child, MutableMapping):
                if not create:
                    raise KeyError(key)
                raise FormatError(f"key {key!r}: {walked!r} is a value, not a table")
            node = child
        return node

    def get(self, key: str) -> Any:
        table = self._table(key, create=False)
        _parent, leaf = parent_and_leaf(key)
        if leaf not in table:
            raise KeyError(key)
        return self.plain(table[leaf])

    def set(self, key: str, value: Any) -> None:
        if value is None:
            raise FormatError(f"key {key!r}: null values are not written")
        table = self._table(key, create=True)
        table[parent_and_leaf(key)[1]] = self.wrap(value)

    def delete(self, key: str) -> None:
        table = self._table(key, create=False)
        leaf = parent_and_leaf(key)[1]
        if leaf not in table:
            raise KeyError(key)
        del table[leaf]

    def rename(self, old: str, new: str) -> None:
        table = self._table(old, create=False)
        old_leaf = parent_and_leaf(old)[1]
        if old_leaf not in table:
            raise KeyError(old)
        if self.has(new):
            raise FormatError(f"key {new!r} already exists")
        if parent_and_leaf(old)[0] == parent_and_leaf(new)[0]:
            self.rename_in(table, old_leaf, parent_and_leaf(new)[1])
            return
        value = self.get(old)
        self.delete(old)
        self.set(new, value)

    def dotted_keys(self) -> list[str]:
        return _leaf_keys(self.root, "")

    def data(self) -> dict[str, Any]:
        plain = self.plain(self.root)
        assert isinstance(plain, dict)
        return plain

    def comments(self) -> list[Comment]:
        """Comments on their own lines (a comment after a value on the same line is not
        listed)."""
        return [
            Comment(number, raw.strip())
            for number, (raw, _end) in enumerate(split_lines(self.source), start=1)
            if raw.lstrip().startswith("#")
        ]


def _leaf_keys(table: Mapping[str, Any], prefix: str) -> list[str]:
    keys: list[str] = []
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            keys.extend(_leaf_keys(value, dotted))
        else:
            keys.append(dotted)
    return keys
