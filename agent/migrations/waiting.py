"""Runs waiting for input, remembered across agent restarts (``state_dir/waiting-runs.json``).

A run that waits for input has changed nothing yet (inputs are collected before the backup), so
there is no migration journal for it; this file is what lets a restarted agent resume the same
run (same ``run_id``, start time and input deadline) instead of starting a new one. It holds
which inputs were asked for, by name, and never a value: the answers live only in memory, so a
restarted agent asks for every input again (with a new ``request_id``).

One JSON object keyed by migration id, rewritten atomically (mode 0600) on each change.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.migrations.fsops import atomic_write, fsync_dir

log = logging.getLogger(__name__)

FILE_NAME = "waiting-runs.json"


@dataclass(frozen=True, slots=True)
class WaitingRun:
    """A run of ``migration_id`` waiting for input since ``waiting_since`` (ISO, UTC)."""

    migration_id: str
    run_id: str
    started_at: str
    waiting_since: str
    detection_event_id: str
    requested_by: str = ""
    request_id: str = ""
    fields: tuple[str, ...] = ()

    @property
    def waiting_since_time(self) -> datetime:
        return datetime.fromisoformat(self.waiting_since)

    @property
    def started_at_time(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WaitingRun:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["fields"] = tuple(values.get("fields", ()))
        record = cls(**values)
        record.waiting_since_time  # noqa: B018 - validates the timestamps
        record.started_at_time  # noqa: B018
        return record


class WaitingRuns:
    """The waiting-runs file of one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def _load(self) -> dict[str, WaitingRun]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable (%s); waiting runs are forgotten", self.path, exc)
            return {}
        records: dict[str, WaitingRun] = {}
        if not isinstance(data, dict):
            return records
        for migration_id, item in data.items():
            try:
                records[str(migration_id)] = WaitingRun.from_json(item)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                log.error("%s: entry %s is unreadable (%s); skipped", self.path, migration_id, exc)
        return records

    def _store(self, records: dict[str, WaitingRun]) -> None:
        if not records:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return
            fsync_dir(self.path.parent)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {key: asdict(record) for key, record in records.items()}
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode("utf-8"), 0o600)

    def get(self, migration_id: str) -> WaitingRun | None:
        """The run of ``migration_id`` that was waiting, None if none."""
        return self._load().get(migration_id)

    def all(self) -> list[WaitingRun]:
        return list(self._load().values())

    def save(self, record: WaitingRun) -> None:
        records = self._load()
        records[record.migration_id] = record
        self._store(records)

    def clear(self, migration_id: str) -> None:
        records = self._load()
        if records.pop(migration_id, None) is not None:
            self._store(records)
