"""Run log viewer parameters: URL query string <-> :class:`LogFilter`.

The run page, its live stream and the runs list share these parsers; a bad value raises
:class:`server.errors.InvalidArgument` naming the parameter (a 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from multidict import MultiMapping

from server.errors import InvalidArgument
from server.web.run_views import LOG_LEVELS, LogLineRow

MAX_TEXT = 200
MAX_SOURCE = 128
MAX_SOURCES = 50


def clean_text(name: str, raw: str, limit: int) -> str:
    """Strip ``raw``; reject NUL, lone surrogates and values longer than ``limit``."""
    if "\x00" in raw:
        raise InvalidArgument("must not contain NUL characters", field=name)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("must be valid UTF-8 text", field=name) from None
    value = raw.strip()
    if len(value) > limit:
        raise InvalidArgument(f"must be at most {limit} characters", field=name)
    return value


def single(query: MultiMapping[str], name: str, limit: int = MAX_TEXT) -> str:
    """A parameter given at most once (``""`` when absent)."""
    values = query.getall(name, [])
    if len(values) > 1:
        raise InvalidArgument("must be given at most once", field=name)
    return clean_text(name, values[0], limit) if values else ""


def parse_int(name: str, raw: str, low: int, high: int) -> int:
    """A decimal integer within ``[low, high]`` or a 400 naming ``name``."""
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidArgument(f"must be an integer between {low} and {high}", field=name)
    return int(raw)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which log lines to show: levels and sources (empty: all) and a text to find."""

    levels: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    text: str = ""

    @property
    def active(self) -> bool:
        return bool(self.levels or self.sources or self.text)

    def matches(self, line: LogLineRow) -> bool:
        """The filter applied to one line (the live stream filters in Python: it reads every
        line to keep its cursor gap-free). Text: case-insensitive substring of the message."""
        if self.levels and line.level.upper() not in self.levels:
            return False
        if self.sources and line.source not in self.sources:
            return False
        return not self.text or self.text.casefold() in line.message.casefold()

    def params(self) -> list[tuple[str, str]]:
        """The query parameters that reproduce this filter."""
        out = [("level", level) for level in self.levels]
        out.extend(("source", source) for source in self.sources)
        if self.text:
            out.append(("q", self.text))
        return out

    def url(self, path: str, extra: list[tuple[str, str]] | None = None) -> str:
        """``path`` with this filter (and ``extra``) as its query string."""
        query = urlencode([*self.params(), *(extra or [])])
        return f"{path}?{query}" if query else path


def parse_log_filter(query: MultiMapping[str]) -> LogFilter:
    """``level`` (repeatable: DEBUG, INFO, WARNING, ERROR; any case), ``source`` (repeatable),
    ``q`` (text). Empty values are ignored."""
    levels: dict[str, None] = {}
    for raw in query.getall("level", []):
        value = clean_text("level", raw, 16).upper()
        if not value:
            continue
        if value not in LOG_LEVELS:
            raise InvalidArgument(f"must be one of {', '.join(LOG_LEVELS)}", field="level")
        levels[value] = None
    sources: dict[str, None] = {}
    for raw in query.getall("source", []):
        value = clean_text("source", raw, MAX_SOURCE)
        if value:
            sources[value] = None
    if len(sources) > MAX_SOURCES:
        raise InvalidArgument(f"must be given at most {MAX_SOURCES} times", field="source")
    ordered = tuple(level for level in LOG_LEVELS if level in levels)
    return LogFilter(levels=ordered, sources=tuple(sources), text=single(query, "q"))
