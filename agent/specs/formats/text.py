"""``text``: a file without keys, edited only by ``replace_text``."""

from __future__ import annotations

from typing import Any, NoReturn

from agent.specs.errors import FormatError
from agent.specs.formats.base import Comment, Document


def _no_keys() -> NoReturn:
    raise FormatError("a text file has no keys")


class TextDocument(Document):
    format = "text"
    typed = False

    def __init__(self, text: str) -> None:
        self.text = text

    def get(self, key: str) -> Any:
        _no_keys()

    def set(self, key: str, value: Any) -> None:
        _no_keys()

    def delete(self, key: str) -> None:
        _no_keys()

    def rename(self, old: str, new: str) -> None:
        _no_keys()

    def dotted_keys(self) -> list[str]:
        return []

    def data(self) -> dict[str, Any]:
        _no_keys()

    def comments(self) -> list[Comment]:
        return []

    def dump(self) -> str:
        return self.text


def parse(text: str) -> TextDocument:
    return TextDocument(text)


def from_data(data: dict[str, Any]) -> TextDocument:
    raise FormatError("nothing converts into a text file")
