"""A line-preserving editor shared by the untyped formats (``ini``, ``kv``, ``env``).

The document is the file's lines, kept as they were read; an edit rewrites, inserts or removes
only the lines of the keys it touches, so every other line (comments, blank lines, order,
spacing) stays byte-identical. The formats differ only in their :class:`Syntax`.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from agent.specs.errors import FormatError
from agent.specs.formats.base import Comment, Document
from agent.specs.values import flatten, nest, to_text


@dataclass(slots=True)
class Line:
    """One line: ``raw`` without its line end, ``end`` the line end ("" for a last line without
    one); for an entry its ``section`` ("" outside sections), ``key`` and decoded ``value``."""

    raw: str
    end: str
    kind: str  # "blank", "comment", "section", "entry"
    section: str = ""
    key: str = ""
    value: str = ""


class Syntax:
    """How one untyped format spells its lines."""

    name = ""
    sections = False
    comment_marks: tuple[str, ...] = ("#",)
    key_pattern = re.compile(r"[^=\s][^=]*?")

    @abstractmethod
    def entry(self, text: str, number: int) -> tuple[str, str] | None:
        """``(key, value)`` of an entry line (None if it is not one); raises
        :class:`FormatError` for a malformed value."""

    @abstractmethod
    def format_entry(self, key: str, value: str) -> str:
        """A new entry line."""

    @abstractmethod
    def replace_value(self, line: Line, value: str) -> str:
        """``line`` with its value replaced (its key spelling and separator kept)."""

    @abstractmethod
    def replace_key(self, line: Line, key: str) -> str:
        """``line`` with its key replaced."""

    def check_key(self, key: str) -> None:
        """Refuse a key this format cannot write (:class:`FormatError`)."""
        if not self.key_pattern.fullmatch(key):
            raise FormatError(f"key {key!r} cannot be written in a {self.name} file")


_SECTION = re.compile(r"\s*\[([^\[\]]+)\]\s*")


def split_lines(text: str) -> list[tuple[str, str]]:
    """``(line, line end)`` pairs; the line ends are kept exactly (``\\n``, ``\\r\\n``)."""
    result: list[tuple[str, str]] = []
    for chunk in text.splitlines(keepends=True):
        body = chunk.rstrip("\r\n")
        result.append((body, chunk[len(body) :]))
    return result


class LinesDocument(Document):
    """A document of lines, edited in place (see the module docstring)."""

    typed = False

    def __init__(self, syntax: Syntax, text: str) -> None:
        self.syntax = syntax
        self.format = syntax.name
        self.lines: list[Line] = []
        section = ""
        seen_sections: set[str] = set()
        seen_keys: dict[tuple[str, str], int] = {}
        for number, (raw, end) in enumerate(split_lines(text), start=1):
            stripped = raw.strip()
            if not stripped:
                self.lines.append(Line(raw, end, "blank"))
                continue
            if stripped.startswith(syntax.comment_marks):
                self.lines.append(Line(raw, end, "comment"))
                continue
            header = _SECTION.fullmatch(raw) if syntax.sections else None
            if header is not None:
                section = header.group(1).strip()
                if section in seen_sections:
                    raise FormatError(f"section [{section}] appears twice", number)
                seen_sections.add(section)
                self.lines.append(Line(raw, end, "section", section=section))
                continue
            if raw[:1].isspace() and self.lines and self.lines[-1].kind == "entry":
                raise FormatError("continuation lines are not supported", number)
            parsed = syntax.entry(raw, number)
            if parsed is None:
                expected = "'[section]' or 'key = value'" if syntax.sections else "'key = value'"
                raise FormatError(f"expected {expected}", number)
            key, value = parsed
            if (section, key) in seen_keys:
                where = f" in [{section}]" if section else ""
                raise FormatError(
                    f"key {key!r}{where} appears twice (also line {seen_keys[section, key]})",
                    number,
                )
            seen_keys[section, key] = number
            self.lines.append(Line(raw, end, "entry", section, key, value))

    # ------------------------------------------------------------ lookup

    def _sections(self) -> list[str]:
        return [line.section for line in self.lines if line.kind == "section"]

    def _split(self, key: str, *, for_write: bool) -> tuple[str, str]:
        """``(section, key)`` of a dotted key: the longest existing section that prefixes it;
        for a new key without one, everything before the last dot."""
        if not self.syntax.sections:
            return "", key
        best = ""
        for section in self._sections():
            if key.startswith(section + ".") and len(section) > len(best):
                best = section
        if best:
            return best, key[len(best) + 1 :]
        if for_write and "." in key:
            section, _, name = key.rpartition(".")
            return section, name
        return "", key

    def _index(self, key: str) -> int:
        section, name = self._split(key, for_write=False)
        for index, line in enumerate(self.lines):
            if line.kind == "entry" and line.section == section and line.key == name:
                return index
        raise KeyError(key)

    def _dotted(self, line: Line) -> str:
        return f"{line.section}.{line.key}" if line.section else line.key

    # ------------------------------------------------------------ reading

    def get(self, key: str) -> Any:
        return self.lines[self._index(key)].value

    def line_of(self, key: str) -> int:
        try:
            return self._index(key) + 1
        except KeyError:
            return 0

    def dotted_keys(self) -> list[str]:
        return [self._dotted(line) for line in self.lines if line.kind == "entry"]

    def data(self) -> dict[str, Any]:
        return nest((self._dotted(line), line.value) for line in self.lines if line.kind == "entry")

    def comments(self) -> list[Comment]:
        return [
            Comment(number, line.raw.strip())
            for number, line in enumerate(self.lines, start=1)
            if line.kind == "comment"
        ]

    def dump(self) -> str:
        return "".join(line.raw + line.end for line in self.lines)

    # ------------------------------------------------------------ editing

    def _line_end(self) -> str:
        return next((line.end for line in self.lines if line.end), "\n")

    def _insert(self, index: int, line: Line) -> None:
        if index > 0 and not self.lines[index - 1].end:
            self.lines[index - 1].end = self._line_end()
        self.lines.insert(index, line)

    def set(self, key: str, value: Any) -> None:
        text = to_text(key, value)
        try:
            index = self._index(key)
        except KeyError:
            self._add(key, text)
            return
        line = self.lines[index]
        line.raw = self.syntax.replace_value(line, text)
        line.value = text

    def _add(self, key: str, text: str) -> None:
        section, name = self._split(key, for_write=True)
        self.syntax.check_key(name)
        entry = Line(self.syntax.format_entry(name, text), self._line_end(), "entry")
        entry.section, entry.key, entry.value = section, name, text
        position = self._insert_position(section)
        if position is None:
            header = Line(f"[{section}]", self._line_end(), "section", section=section)
            at = len(self.lines)
            if self.lines and self.lines[-1].kind != "blank":
                self._insert(at, Line("", self._line_end(), "blank"))
                at += 1
            self._insert(at, header)
            position = at + 1
        self._insert(position, entry)

    def _insert_position(self, section: str) -> int | None:
        """Where a new key of ``section`` goes: after its last entry (or its header, or before
        the first section for a key outside sections); None if the section does not exist."""
        last: int | None = None
        for index, line in enumerate(self.lines):
            if line.kind in ("section", "entry") and line.section == section:
                last = index
        if last is not None:
            return last + 1
        if section:
            return None
        first_section = next(
            (index for index, line in enumerate(self.lines) if line.kind == "section"), None
        )
        if first_section is None:
            return len(self.lines)
        return first_section

    def delete(self, key: str) -> None:
        del self.lines[self._index(key)]

    def rename(self, old: str, new: str) -> None:
        index = self._index(old)
        if self.has(new):
            raise FormatError(f"key {new!r} already exists")
        line = self.lines[index]
        section, name = self._split(new, for_write=True)
        if section == line.section:
            self.syntax.check_key(name)
            line.raw = self.syntax.replace_key(line, name)
            line.key = name
            return
        value = line.value
        self.delete(old)
        self._add(new, value)


class IniLikeSyntax(Syntax):
    """``key = value`` (or ``key: value`` with ``colon``) entries; values are the rest of the
    line, stripped."""

    def __init__(self, name: str, *, sections: bool, colon: bool, marks: tuple[str, ...]) -> None:
        self.name = name
        self.sections = sections
        self.comment_marks = marks
        separators = "=:" if colon else "="
        self._entry = re.compile(
            rf"(?P<indent>\s*)(?P<key>[^{separators}\s\[][^{separators}]*?)"
            rf"(?P<sep>\s*[{separators}]\s*)(?P<value>.*?)(?P<trail>\s*)"
        )
        self.key_pattern = re.compile(rf"[^{separators}\s\[#;]([^{separators}]*[^{separators}\s])?")

    def entry(self, text: str, number: int) -> tuple[str, str] | None:
        match = self._entry.fullmatch(text)
        if match is None:
            return None
        return match.group("key"), match.group("value")

    def format_entry(self, key: str, value: str) -> str:
        return f"{key} = {value}" if value else f"{key} ="

    def replace_value(self, line: Line, value: str) -> str:
        match = self._entry.fullmatch(line.raw)
        assert match is not None
        return match.group("indent") + match.group("key") + match.group("sep") + value

    def replace_key(self, line: Line, key: str) -> str:
        match = self._entry.fullmatch(line.raw)
        assert match is not None
        return line.raw[: match.start("key")] + key + line.raw[match.end("key") :]


def from_flat(syntax: Syntax, data: dict[str, Any]) -> LinesDocument:
    """A new line-based file holding ``data`` (nested tables as dotted keys; an empty table
    holds no value), every value set through ``syntax``."""
    document = LinesDocument(syntax, "")
    for key, value in flatten(data):
        if not isinstance(value, dict):
            document.set(key, value)
    return document
