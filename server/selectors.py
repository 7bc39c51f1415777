"""Target selectors: which agents an expression picks. Pure parsing, no SQL (that is
``server.storage.targets``).

One expression is one or more terms separated by spaces; every term of every expression must
hold (AND)::

    env=prod                 label env is prod, or the agent has the tag env=prod
    env=prod,staging         ... is any of these (same as env in (prod,staging))
    env!=prod                neither (agents without the label match)
    role in (db,cache)       role not in (db,cache)
    canary                   the agent has the tag canary, a tag canary=..., or a label canary
    !canary                  none of these
    host=web-*               hostname glob (* and ?; case-insensitive); host!=web-* excludes
    id=ID[,ID...]            explicit agent ids; id!=ID excludes
    health=online            online (default) | offline (stale, offline, never seen) | any

Values are words (letters, digits and ``_ . - : / @ + * ?``) or double-quoted strings
(``\\"`` and ``\\\\`` escape). ``host``, ``id`` and ``health`` are reserved: a label with one of
those keys cannot be selected. Revoked agents are never selected. Errors name the expression
and the 0-based character offset: ``select[1]: expected ')' at 14``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from server.errors import InvalidArgument

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
MAX_EXPRESSIONS = 32
MAX_EXPRESSION = 40_000  # room for 1,000 agent ids
MAX_VALUES = 1000
RESERVED = frozenset({"host", "id", "health"})
_WORD = re.compile(r"[A-Za-z0-9_.:/@+*?-]+")
_SPACE = re.compile(r"\s+")


class HealthFilter(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class LabelTerm:
    """Label ``key`` (or tag ``key=value``) is one of ``values``; ``negate``: none of them."""

    key: str
    values: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class PresenceTerm:
    """A tag ``name``, a tag ``name=...`` or a label ``name`` exists (``negate``: none)."""

    name: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class HostTerm:
    """The hostname matches one of the globs (``negate``: none)."""

    patterns: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class IdTerm:
    ids: tuple[str, ...]
    negate: bool = False


Term = LabelTerm | PresenceTerm | HostTerm | IdTerm


@dataclass(frozen=True, slots=True)
class Selector:
    """The AND of ``terms``, among agents of ``health`` (never revoked ones)."""

    terms: tuple[Term, ...] = ()
    health: HealthFilter = HealthFilter.ONLINE


class SelectorError(InvalidArgument):
    """An expression that does not parse: ``select[i]: <what> at <offset>``."""


def validate_tag(tag: str, field: str = "tag") -> str:
    """``tag`` when it is ``name`` or ``name=value`` (name ``[a-z0-9][a-z0-9_.-]{0,62}``, value
    1 to 128 of letters, digits, ``_ . : / @ + -``); InvalidArgument naming ``field`` else."""
    name, sep, value = tag.partition("=")
    if NAME.fullmatch(name) is None or (sep and TAG_VALUE.fullmatch(value) is None):
        raise InvalidArgument(
            f"{tag[:80]!r} is not a tag: give NAME or NAME=VALUE (NAME: 1 to 63 of a-z, 0-9, "
            "'_', '.', '-', starting with a letter or digit; VALUE: 1 to 128 of letters, "
            "digits, '_', '.', ':', '/', '@', '+', '-')",
            field=field,
        )
    return tag


class _Parser:
    def __init__(self, text: str, index: int) -> None:
        self.text = text
        self.index = index
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> SelectorError:
        return SelectorError(
            f"{what} at {self.pos if at is None else at}", field=f"select[{self.index}]"
        )

    def skip(self) -> None:
        match = _SPACE.match(self.text, self.pos)
        if match:
            self.pos = match.end()

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def expect(self, token: str) -> None:
        if not self.peek(token):
            raise self.fail(f"expected {token!r}")
        self.pos += len(token)

    def keyword(self, word: str) -> bool:
        """``word`` as a whole word at the cursor (consumed when present)."""
        self.skip()
        match = _WORD.match(self.text, self.pos)
        if match and match.group() == word:
            self.pos = match.end()
            return True
        return False

    def word(self, what: str) -> tuple[str, int]:
        self.skip()
        match = _WORD.match(self.text, self.pos)
        if match is None:
            raise self.fail(f"expected {what}")
        self.pos = match.end()
        return match.group(), match.start()

    def value(self) -> str:
        self.skip()
        if self.text.startswith('"', self.pos):
            start = self.pos
            self.pos += 1
            out: list[str] = []
            while self.pos < len(self.text):
                char = self.text[self.pos]
                if char == "\\" and self.pos + 1 < len(self.text):
                    out.append(self.text[self.pos + 1])
                    self.pos += 2
                elif char == '"':
                    self.pos += 1
                    return "".join(out)
                else:
                    out.append(char)
                    self.pos += 1
            raise self.fail("unterminated string", start)
        return self.word("a value")[0]

    def values(self) -> tuple[str, ...]:
        values = [self.value()]
        while self.peek(","):
            self.pos += 1
            values.append(self.value())
        if len(values) > MAX_VALUES:
            raise self.fail(f"at most {MAX_VALUES} values")
        return tuple(values)

    def listed(self) -> tuple[str, ...]:
        self.expect("(")
        values = self.values()
        self.expect(")")
        return values

    def term(self) -> Term | HealthFilter:
        self.skip()
        start = self.pos
        if self.peek("!") and not self.peek("!="):
            self.pos += 1
            name, at = self.word("a tag or label name after '!'")
            return PresenceTerm(self.name(name, at), negate=True)
        key, at = self.word("a label, tag, host=, id= or health=")
        if self.peek("!="):
            self.pos += 2
            negate, values = True, self.values()
        elif self.peek("="):
            self.pos += 1
            negate, values = False, self.values()
        elif self.keyword("in"):
            negate, values = False, self.listed()
        elif self.keyword("not"):
            if not self.keyword("in"):
                raise self.fail("expected 'in' after 'not'")
            negate, values = True, self.listed()
        else:
            if key in RESERVED:
                raise self.fail(f"expected '=' after {key!r}")
            return PresenceTerm(self.name(key, at))
        return self.build(key, at, values, negate, start)

    def name(self, name: str, at: int) -> str:
        if NAME.fullmatch(name) is None:
            raise self.fail(
                f"{name!r} is not a label or tag name (1 to 63 of a-z, 0-9, '_', '.', '-', "
                "starting with a letter or digit)",
                at,
            )
        return name

    def build(
        self, key: str, at: int, values: tuple[str, ...], negate: bool, start: int
    ) -> Term | HealthFilter:
        if key == "host":
            for value in values:
                if any(char in value for char in "[]%\\"):
                    raise self.fail("host globs take '*' and '?' only", start)
            return HostTerm(values, negate)
        if key == "id":
            return IdTerm(values, negate)
        if key == "health":
            if negate or len(values) != 1 or values[0] not in set(HealthFilter):
                raise self.fail("expected health=online, health=offline or health=any", start)
            return HealthFilter(values[0])
        return LabelTerm(self.name(key, at), values, negate)

    def parse(self) -> list[Term | HealthFilter]:
        if len(self.text) > MAX_EXPRESSION:
            raise self.fail(f"longer than {MAX_EXPRESSION} characters", 0)
        terms: list[Term | HealthFilter] = []
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("empty expression")
        while True:
            terms.append(self.term())
            self.skip()
            if self.pos >= len(self.text):
                return terms
            if (
                not self.text[self.pos].isspace()
                and self.pos > 0
                and not self.text[self.pos - 1].isspace()
            ):
                raise self.fail(f"unexpected {self.text[self.pos]!r}")


def parse_selector(expressions: Sequence[str]) -> Selector:
    """Parse every expression (the AND of all); SelectorError naming the first bad one."""
    if len(expressions) > MAX_EXPRESSIONS:
        raise SelectorError(f"at most {MAX_EXPRESSIONS} expressions", field="select")
    terms: list[Term] = []
    health = HealthFilter.ONLINE
    for index, text in enumerate(expressions):
        for term in _Parser(text, index).parse():
            if isinstance(term, HealthFilter):
                health = term
            else:
                terms.append(term)
    return Selector(tuple(terms), health)
