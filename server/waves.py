"""What a rollout's settings look like as people write them: waves (``5,10%,100%``), a failure
rate (``5%``) and durations (``90``, ``30s``, ``10m``, ``2h``). Parsed once here for the CLI, the
API and the web form; errors are InvalidArgument naming the field."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from server.errors import InvalidArgument

MAX_WAVES = 20
MAX_DURATION_SECONDS = 7 * 24 * 3600
_WAVE = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<percent>%?)")
_DURATION = re.compile(r"(?P<number>\d+)(?P<unit>[smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def split_list(text: str) -> list[str]:
    """``"5, 10%,100%"`` -> ``["5", "10%", "100%"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def check_waves(labels: Sequence[str]) -> tuple[str, ...]:
    """The wave labels, checked (InvalidArgument, field ``waves``): 1 to ``MAX_WAVES`` sizes,
    each a host count or a percentage of the selected hosts, the last ``100%``."""
    if not 1 <= len(labels) <= MAX_WAVES:
        raise InvalidArgument(f"give 1 to {MAX_WAVES} wave sizes", field="waves")
    checked = []
    for index, label in enumerate(labels):
        label = label.strip()
        match = _WAVE.fullmatch(label)
        if match is None:
            raise InvalidArgument(
                f"wave {index + 1} ({label!r}) is not a host count or a percentage like 10%",
                field="waves",
            )
        value = float(match["number"])
        if match["percent"] and not 0 < value <= 100:
            raise InvalidArgument(
                f"wave {index + 1} ({label}) must be above 0% and at most 100%", field="waves"
            )
        if not match["percent"] and (value != int(value) or value < 1):
            raise InvalidArgument(
                f"wave {index + 1} ({label}) must be a whole number of hosts", field="waves"
            )
        checked.append(label)
    if checked[-1] != "100%":
        raise InvalidArgument(
            "the last wave must take every selected host: end the waves with 100%",
            field="waves",
        )
    return tuple(checked)


def wave_sizes(labels: Sequence[str], total: int) -> list[int]:
    """Cumulative host counts of the waves for ``total`` selected hosts: a percentage rounds
    up, a count is capped at ``total``, and a wave never takes fewer hosts than the one before
    (``5,25%`` on 4 hosts: 4 and 4; the second wave then has no host of its own).
    InvalidArgument when two counts, or two percentages, go down."""
    sizes: list[int] = []
    given: list[tuple[float, bool]] = []
    for index, label in enumerate(check_waves(labels)):
        match = _WAVE.fullmatch(label)
        assert match is not None
        value, percent = float(match["number"]), bool(match["percent"])
        for earlier, (other, other_percent) in enumerate(given):
            if other_percent == percent and value < other:
                raise InvalidArgument(
                    f"wave {index + 1} ({label}) is smaller than wave {earlier + 1} "
                    f"({labels[earlier].strip()}): sizes are cumulative, each at least the one "
                    "before",
                    field="waves",
                )
        given.append((value, percent))
        size = math.ceil(total * value / 100 - 1e-9) if percent else int(value)
        size = min(max(size, 1 if total else 0), total)
        sizes.append(max(size, sizes[-1]) if sizes else size)
    return sizes


def parse_rate(text: str, field: str = "max_failure_rate") -> float:
    """``"5%"`` (or ``"5"``) -> 0.05; InvalidArgument unless 0% to 100%."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a percentage like 5%", field=field) from None
    if not 0 <= value <= 100 or math.isnan(value):
        raise InvalidArgument(f"{text!r} must be between 0% and 100%", field=field)
    return value / 100


def parse_duration(text: str, field: str) -> int:
    """``"90"`` / ``"30s"`` / ``"10m"`` / ``"2h"`` / ``"1d"`` -> seconds (at most a week)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidArgument(f"{text!r} is not a duration like 30s, 10m or 2h", field=field)
    seconds = int(match["number"]) * _UNITS[match["unit"]]
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidArgument("must be at most 7 days", field=field)
    return seconds


def format_duration(seconds: int) -> str:
    """600 -> ``"10m"``, 90 -> ``"90s"``, 7200 -> ``"2h"``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
