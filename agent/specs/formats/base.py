"""What every format's document offers: dotted-key access, edits, its values as plain data,
its comments, and serialization back to text.

Keys are dotted paths: ``section.key`` in INI, nested tables in JSON, TOML and YAML, the key
itself in ``kv`` and ``env`` files. Edits keep everything else of the file as it was (comments,
blank lines, key order) as far as the format's editor can; :meth:`Document.dump` of an unedited
document gives back the text it was parsed from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment of a file: 1-based ``line`` and its text (with the comment marker)."""

    line: int
    text: str


class Document(ABC):
    """A parsed config file. ``typed``: whether values keep types (JSON, TOML, YAML) or are all
    text (INI, kv, env). Methods raise ``KeyError`` for a missing key and
    :class:`~agent.specs.errors.FormatError` for a value the format cannot hold."""

    format: str = ""
    typed: bool = True

    @abstractmethod
    def get(self, key: str) -> Any:
        """The value at ``key`` (plain Python data)."""

    def has(self, key: str) -> bool:
        try:
            self.get(key)
        except KeyError:
            return False
        return True

    @abstractmethod
    def set(self, key: str, value: Any) -> None:
        """Set ``key`` (its parents are created when missing; a new key goes after its
        siblings)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``."""

    @abstractmethod
    def rename(self, old: str, new: str) -> None:
        """Move the value of ``old`` to ``new``; in place when both have the same parent."""

    @abstractmethod
    def dotted_keys(self) -> list[str]:
        """Every leaf key, dotted, in file order."""

    def line_of(self, key: str) -> int:
        """The 1-based line of ``key`` (0: unknown, or a format that does not track lines)."""
        return 0

    @abstractmethod
    def data(self) -> dict[str, Any]:
        """All values as nested plain dicts, lists and scalars."""

    @abstractmethod
    def comments(self) -> list[Comment]:
        """The comments of the document."""

    @abstractmethod
    def dump(self) -> str:
        """The document as text."""


def parent_and_leaf(key: str) -> tuple[str, str]:
    """``"a.b.c"`` -> ``("a.b", "c")``; ``"c"`` -> ``("", "c")``."""
    parent, _, leaf = key.rpartition(".")
    return parent, leaf
