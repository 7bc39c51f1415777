"""Form pieces shared by the History, runs and migration pages: a choice and the agent field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Option:
    """A filter-form choice (checkbox or select option)."""

    value: str
    label: str
    selected: bool


@dataclass(frozen=True, slots=True)
class AgentChooser:
    """A form's agent field: a list to choose from (``options``), or for a fleet larger than a
    list may be (``server.services.history.list_agent_choices`` gave None) a text field for an
    agent id, holding ``value``."""

    options: tuple[Option, ...] | None
    value: str


def agent_chooser(agents: Iterable[tuple[str, str]] | None, selected: str | None) -> AgentChooser:
    """The agent field for ``(agent_id, hostname)`` pairs (None: too many to list) with
    ``selected`` chosen; an id the list does not know is kept (as "unknown agent ...") so the
    form still shows the filter."""
    if agents is None:
        return AgentChooser(options=None, value=selected or "")
    options = [Option(agent_id, host, agent_id == selected) for agent_id, host in agents]
    if selected and not any(o.selected for o in options):
        options.append(Option(selected, f"unknown agent {selected}", True))
    return AgentChooser(options=tuple(options), value=selected or "")
