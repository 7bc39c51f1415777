"""``env``: ``KEY=VALUE`` lines (optionally ``export KEY=VALUE``), ``#`` comments. Values may
be double-quoted (``\\`` escapes ``"``, ``\\``, ``$``, backquote and ``n``), single-quoted
(literal) or bare; a quoted value or a bare one followed by `` #`` may carry a comment."""

from __future__ import annotations

import re
from typing import Any

from agent.specs.errors import FormatError
from agent.specs.formats.lines import Line, LinesDocument, Syntax, from_flat

_ENTRY = re.compile(r"(?P<lead>\s*(?:export\s+)?)(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)")
_BARE_SAFE = re.compile(r"[A-Za-z0-9_./:@%+,=-]*")
_ESCAPES = {"n": "\n", '"': '"', "\\": "\\", "$": "$", "`": "`"}


def _decode(text: str, number: int) -> tuple[str, str]:
    """``(value, rest)``: the value of an entry's right side and what follows it (spaces and an
    optional comment)."""
    if text.startswith('"'):
        chars: list[str] = []
        index = 1
        while index < len(text):
            char = text[index]
            if char == "\\" and index + 1 < len(text) and text[index + 1] in _ESCAPES:
                chars.append(_ESCAPES[text[index + 1]])
                index += 2
                continue
            if char == '"':
                return "".join(chars), _rest(text[index + 1 :], number)
            chars.append(char)
            index += 1
        raise FormatError("unterminated double-quoted value", number)
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise FormatError("unterminated single-quoted value", number)
        return text[1:end], _rest(text[end + 1 :], number)
    value, hash_mark, _comment = text.partition(" #")
    return value.strip(), (text[len(value) :] if hash_mark else "")


def _rest(text: str, number: int) -> str:
    if text.strip() and not text.strip().startswith("#"):
        raise FormatError("unexpected text after the quoted value", number)
    return text


def encode(value: str) -> str:
    """``value`` as an env file spells it: bare when safe, else double-quoted."""
    if _BARE_SAFE.fullmatch(value):
        return value
    escaped = "".join(
        "\\" + char if char in '"\\$`' else "\\n" if char == "\n" else char for char in value
    )
    return f'"{escaped}"'


class EnvSyntax(Syntax):
    name = "env"
    sections = False
    comment_marks = ("#",)
    key_pattern = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

    def entry(self, text: str, number: int) -> tuple[str, str] | None:
        match = _ENTRY.fullmatch(text)
        if match is None:
            return None
        value, _rest_text = _decode(match.group("value"), number)
        return match.group("key"), value

    def format_entry(self, key: str, value: str) -> str:
        return f"{key}={encode(value)}"

    def replace_value(self, line: Line, value: str) -> str:
        match = _ENTRY.fullmatch(line.raw)
        assert match is not None
        _old, rest = _decode(match.group("value"), 0)
        return f"{match.group('lead')}{match.group('key')}={encode(value)}{rest}"

    def replace_key(self, line: Line, key: str) -> str:
        match = _ENTRY.fullmatch(line.raw)
        assert match is not None
        return line.raw[: match.start("key")] + key + line.raw[match.end("key") :]


SYNTAX = EnvSyntax()


def parse(text: str) -> LinesDocument:
    """The env document in ``text`` (:class:`FormatError` with the line when malformed)."""
    return LinesDocument(SYNTAX, text)


def from_data(data: dict[str, Any]) -> LinesDocument:
    """A new env file; every key must already be a valid variable name (rename first)."""
    return from_flat(SYNTAX, data)
