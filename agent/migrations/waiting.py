"""Runs waiting for input, remembered across agent restarts (``state_dir/waiting-runs.json``).

A run that waits for input has changed nothing yet (inputs are collected before the backup), so
there is no migration journal for it; this file is what lets a restarted agent resume the same
run (same ``run_id``, start time and input deadline) instead of starting a new one. It holds
which inputs were asked for, by name, and the ``request_id`` of that ask, never a value: the
answers live only in memory. A restarted agent asks again with the same ``request_id`` when it
needs the same fields (so answers an admin sent while the agent was down are still accepted),
with a new one otherwise.

A ``cancel_run`` for a recorded run that is not the run in progress (``once`` mode, or the
daemon before it resumed the run) marks the record cancelled (:meth:`WaitingRuns.cancel`); the
engine then ends the run CANCELLED, nothing changed, when it resumes it. A run that ends in any
other way is removed from the file.

One JSON object keyed by migration id, rewritten atomically (mode 0600) on each change; every
read-modify-write holds a process-wide lock (the migration worker and the check-in thread both
change it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.migrations.fsops import atomic_write, fsync_dir

log = logging.getLogger(__name__)

FILE_NAME = "waiting-runs.json"

_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class WaitingRun:
    """A run of ``migration_id`` waiting for input since ``waiting_since`` (ISO, UTC);
    ``cancelled``: why it was cancelled while not in progress ("" while it is not)."""

    migration_id: str
    run_id: str
    started_at: str
    waiting_since: str
    detection_event_id: str
    requested_by: str = ""
    request_id: str = ""
    fields: tuple[str, ...] = ()
    cancelled: str = ""

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
        with _LOCK:
            return self._load().get(migration_id)

    def all(self) -> list[WaitingRun]:
        """Every recorded run (the daemon re-opens their asks before its first check-in)."""
        with _LOCK:
            return list(self._load().values())

    def save(self, record: WaitingRun) -> None:
        """Record ``record``; a cancel mark already recorded for the same run is kept."""
        with _LOCK:
            records = self._load()
            old = records.get(record.migration_id)
            if old is not None and old.run_id == record.run_id and old.cancelled:
                record = replace(record, cancelled=old.cancelled)
            records[record.migration_id] = record
            self._store(records)

    def cancel(self, run_id: str, reason: str) -> WaitingRun | None:
        """Mark the recorded run ``run_id`` cancelled (``reason``); the marked record, or None
        if no run with that id is recorded."""
        with _LOCK:
            records = self._load()
            for migration_id, record in records.items():
                if record.run_id == run_id:
                    marked = replace(record, cancelled=record.cancelled or reason)
                    records[migration_id] = marked
                    self._store(records)
                    return marked
            return None

    def clear(self, migration_id: str, run_id: str | None = None) -> None:
        """Forget the record of ``migration_id`` (only if it is run ``run_id``, when given)."""
        with _LOCK:
            records = self._load()
            record = records.get(migration_id)
            if record is None or (run_id is not None and record.run_id != run_id):
                return
            del records[migration_id]
            self._store(records)
