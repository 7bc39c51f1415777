"""The migration journal: ``state_dir/migration-journal.json``, rewritten atomically at each phase.

It exists only while a run is in flight. Phases, in order::

    started     event ids and backup dir chosen; nothing touched yet
    backed_up   backup made and verified
    applying    file operations running (``current_step``, ``ops_done``, files lists)
    verifying   all steps applied, checking the result
    outcome     the outcome event is decided and stored here (``outcome_event``, base64 of the
                serialized MigrationEvent); ``committed`` says whether the new config stays

The commit point is the ``outcome`` write with ``committed = true``. On start, a journal left by a
crash is resolved by :func:`agent.migrations.recovery.recover`: before ``outcome`` the
run is rolled back from the backup and reported as failed ("interrupted ... rolled back"); at
``outcome`` the stored event (and the run's terminal snapshot) is recorded. Either way the event
goes into the outbox (INSERT OR IGNORE on its pre-generated id) BEFORE the journal is deleted, so
it is reported exactly once.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.events import RunLabels
from agent.migrations.fsops import atomic_write, fsync_dir
from flagpost.v1 import agent_pb2

STARTED = "started"
BACKED_UP = "backed_up"
APPLYING = "applying"
VERIFYING = "verifying"
OUTCOME = "outcome"


class JournalError(AgentError):
    """The journal file exists but cannot be understood."""


@dataclass(frozen=True, slots=True)
class Journal:
    """The state of the run in flight."""

    run_id: str
    migration_id: str
    from_version: str
    to_version: str
    config_path: str
    backup_dir: str
    detection_event_id: str
    execution_event_id: str
    started_at: str
    steps: tuple[str, ...]
    touched: tuple[str, ...] = ()
    phase: str = STARTED
    current_step: str = ""
    ops_done: int = 0
    files_created: tuple[str, ...] = ()
    files_modified: tuple[str, ...] = ()
    files_removed: tuple[str, ...] = ()
    committed: bool = False
    outcome_event: str = ""
    # Runs (agent.runs): the terminal snapshot once decided (base64 of the serialized RunUpdate,
    # stored with ``outcome_event``, so it is recorded exactly once) and the server action that
    # asked for the run.
    outcome_update: str = ""
    requested_by_action_id: str = ""
    # What the run's events and snapshots carry (agent.events.RunLabels), for recovery.
    spec_id: str = ""
    spec_revision: int = 0
    reverts_run_id: str = ""

    def labels(self) -> RunLabels:
        """The labels of the run in flight (its events and snapshots after a crash too)."""
        return RunLabels(
            self.spec_id, self.spec_revision, self.requested_by_action_id, self.reverts_run_id
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def with_outcome(
        self,
        event: agent_pb2.MigrationEvent,
        update: agent_pb2.RunUpdate,
        *,
        committed: bool,
    ) -> Journal:
        """This journal at phase ``outcome``, holding the decided event and terminal run
        snapshot; ``committed``: the new config stays."""
        return replace(
            self,
            phase=OUTCOME,
            committed=committed,
            outcome_event=_encode(event),
            outcome_update=_encode(update),
        )

    def stored_event(self) -> agent_pb2.MigrationEvent | None:
        """The outcome event stored at phase ``outcome``, None before."""
        if not self.outcome_event:
            return None
        return agent_pb2.MigrationEvent.FromString(base64.b64decode(self.outcome_event))

    def stored_update(self) -> agent_pb2.RunUpdate | None:
        """The terminal run snapshot stored with the outcome, None if none was."""
        if not self.outcome_update:
            return None
        return agent_pb2.RunUpdate.FromString(base64.b64decode(self.outcome_update))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("steps", "touched", "files_created", "files_modified", "files_removed"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)


def _encode(message: agent_pb2.MigrationEvent | agent_pb2.RunUpdate) -> str:
    return base64.b64encode(message.SerializeToString()).decode("ascii")


def write_journal(path: Path, journal: Journal) -> None:
    """Atomically replace the journal (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(journal.to_json(), indent=2) + "\n").encode("utf-8")
    atomic_write(path, data, 0o600)


def read_journal(path: Path) -> Journal | None:
    """The journal, or None when no run is in flight. Raises :class:`JournalError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Journal.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        raise JournalError(f"{path}: unreadable journal: {exc}") from exc


def clear_journal(path: Path) -> None:
    """Delete the journal durably (the run is fully resolved)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
