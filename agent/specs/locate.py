"""Line numbers of the fields of a TOML document, so a spec error can say where it is.

:mod:`tomllib` gives values without positions; this scanner walks the same (already valid)
source once and records the line where each field path starts: ``id``, ``versions[0]`` (its
``[[versions]]`` header), ``steps[1].ops[2].op``. It only locates, it never decides what a value
is: :mod:`tomllib` has parsed the document before this runs.
"""

from __future__ import annotations

import contextlib
import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}\n#]")


def join(prefix: str, key: str) -> str:
    """``prefix.key`` (``key`` alone at the top)."""
    return f"{prefix}.{key}" if prefix else key


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[str, int] = {}
        self._aot_count: dict[str, int] = {}
        self._aot_current: dict[str, str] = {}

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, newlines: bool) -> None:
        """Skip spaces, comments and (with ``newlines``) line ends."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def string(self) -> str:
        """A basic, literal or multi-line string at ``pos``; returns its raw inside."""
        text = self.text
        for quote in ('"""', "'''"):
            if text.startswith(quote, self.pos):
                end = text.find(quote, self.pos + 3)
                while quote == '"""' and end > 0 and _escaped(text, end):
                    end = text.find(quote, end + 1)
                end = len(text) if end < 0 else end
                while text.startswith(quote[0], end + 3):
                    end += 1  # up to two quotes may end the content
                inside = text[self.pos + 3 : end]
                self.pos = end + 3
                return inside
        quote = text[self.pos]
        end = self.pos + 1
        while end < len(text) and text[end] != quote:
            end += 2 if quote == '"' and text[end] == "\\" else 1
        inside = text[self.pos + 1 : end]
        self.pos = end + 1
        return inside

    def key(self) -> list[str]:
        """A dotted key; returns its parts."""
        parts: list[str] = []
        while True:
            self.skip(newlines=False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise ValueError(f"no key at {self.pos}")
                parts.append(match.group())
                self.pos = match.end()
            self.skip(newlines=False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def value(self, path: str) -> None:
        self.skip(newlines=False)
        char = self.peek()
        if char == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip(newlines=True)
                if self.peek() == "]":
                    self.pos += 1
                    return
                item = f"{path}[{index}]"
                self.lines.setdefault(item, self.line)
                self.value(item)
                index += 1
                self.skip(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
        elif char == "{":
            self.pos += 1
            while True:
                self.skip(newlines=True)
                if self.peek() == "}":
                    self.pos += 1
                    return
                self.keyval(path)
                self.skip(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
        elif char in ('"', "'"):
            self.string()
        else:
            match = _SCALAR_END.search(self.text, self.pos)
            self.pos = len(self.text) if match is None else match.start()

    def keyval(self, prefix: str) -> None:
        line = self.line
        path = prefix
        for part in self.key():
            path = join(path, part)
            self.lines.setdefault(path, line)
        self.skip(newlines=False)
        if self.peek() != "=":
            raise ValueError(f"no '=' at {self.pos}")
        self.pos += 1
        self.value(path)

    def resolve(self, parts: list[str]) -> str:
        """The path of a header's key: each array of tables it passes through adds its index."""
        path = ""
        for part in parts:
            path = join(path, part)
            path = self._aot_current.get(path, path)
        return path

    def header(self) -> str:
        line = self.line
        is_array = self.text.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        parts = self.key()
        self.pos += 2 if is_array else 1
        if is_array:
            parent = self.resolve(parts[:-1])
            base = join(parent, parts[-1])
            index = self._aot_count.get(base, -1) + 1
            self._aot_count[base] = index
            path = f"{base}[{index}]"
            self._aot_current[base] = path
            self.lines.setdefault(base, line)
        else:
            path = self.resolve(parts)
        self.lines.setdefault(path, line)
        return path

    def document(self) -> None:
        prefix = ""
        while True:
            self.skip(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                prefix = self.header()
            else:
                self.keyval(prefix)


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index - backslashes - 1 >= 0 and text[index - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def field_lines(text: str) -> dict[str, int]:
    """``field path -> 1-based line`` for every key, table and array item of the TOML ``text``
    (as far as the scan got, should the text not be valid TOML)."""
    scanner = _Scanner(text)
    with contextlib.suppress(ValueError, IndexError):
        scanner.document()
    return scanner.lines


_LAST_PART = re.compile(r"(\.[^.\[\]]+|\[\d+\])$")


def line_of(field: str, lines: dict[str, int]) -> int:
    """The line of ``field`` or, when it is missing from the source, of its nearest parent
    (0 if none is found)."""
    current = field
    while current:
        if current in lines:
            return lines[current]
        trimmed = _LAST_PART.sub("", current)
        if trimmed == current:
            break
        current = trimmed
    return 0
