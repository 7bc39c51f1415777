"""Filter-form pieces shared by the History and runs pages: a choice and the agent select."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Option:
    """A filter-form choice (checkbox or select option)."""

    value: str
    label: str
    selected: bool


def agent_options(agents: Iterable[tuple[str, str]], selected: str | None) -> tuple[Option, ...]:
    """The agent select: ``(agent_id, hostname)`` pairs, ``selected`` chosen; an id the list
    does not know is kept (as "unknown agent ...") so the form still shows the filter."""
    options = [Option(agent_id, host, agent_id == selected) for agent_id, host in agents]
    if selected and not any(o.selected for o in options):
        options.append(Option(selected, f"unknown agent {selected}", True))
    return tuple(options)
