"""``toml``: edited with tomlkit, which keeps comments, blank lines, order and spelling.

tomlkit is imported inside the functions only: the agent loads it when a spec touches a TOML
file, never at start (the agent's idle memory stays as it was)."""

from __future__ import annotations

import datetime
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from agent.specs.errors import FormatError
from agent.specs.formats.tree import TreeDocument

if TYPE_CHECKING:
    from tomlkit.container import Container


class TomlDocument(TreeDocument):
    format = "toml"

    def new_table(self) -> MutableMapping[str, Any]:
        import tomlkit

        return tomlkit.table()

    def plain(self, value: Any) -> Any:
        unwrap = getattr(value, "unwrap", None)
        return unwrap() if unwrap is not None else value

    def wrap(self, value: Any) -> Any:
        import tomlkit

        _check_value(value)
        return tomlkit.item(value)

    def rename_in(self, table: MutableMapping[str, Any], old: str, new: str) -> None:
        from tomlkit.container import Container
        from tomlkit.items import Item, Table

        container: Container | None = None
        if isinstance(table, Container):
            container = table
        elif isinstance(table, Table):
            container = table.value
        item = container.item(old) if container is not None else None
        if container is None or not isinstance(item, Item):
            super().rename_in(table, old, new)
            return
        # Container._replace swaps the key in its place, keeping the item and its comment.
        container._replace(old, new, item)

    def dump(self) -> str:
        import tomlkit

        return tomlkit.dumps(self.root)


def _check_value(value: Any) -> None:
    if value is None:
        raise FormatError("toml has no null")
    if isinstance(value, list):
        for item in value:
            _check_value(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_value(item)
    elif not isinstance(
        value, str | int | float | bool | datetime.date | datetime.time | datetime.datetime
    ):
        raise FormatError(f"toml cannot hold a {type(value).__name__}")


def parse(text: str) -> TomlDocument:
    """The TOML document in ``text`` (:class:`FormatError` with the line when malformed)."""
    import tomlkit
    from tomlkit.exceptions import ParseError

    try:
        root: Container = tomlkit.parse(text)
    except ParseError as exc:
        message = str(exc).split(" at line ")[0]
        raise FormatError(message, exc.line) from None
    return TomlDocument(root, text)


def from_data(data: dict[str, Any]) -> TomlDocument:
    """A new TOML document holding ``data``: values first, then tables (TOML needs a table's
    plain keys before its sub-tables)."""
    import tomlkit

    document = tomlkit.document()
    holder = TomlDocument(document)
    _fill(holder, document, data)
    return holder


def _fill(holder: TomlDocument, table: MutableMapping[str, Any], data: dict[str, Any]) -> None:
    import tomlkit

    tables = [(key, value) for key, value in data.items() if isinstance(value, dict)]
    for key, value in data.items():
        if not isinstance(value, dict):
            table[key] = holder.wrap(value)
    for key, value in tables:
        child = tomlkit.table()
        _fill(holder, child, value)
        table[key] = child
