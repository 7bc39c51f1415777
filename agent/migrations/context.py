"""What the parts of the migration engine share: where files and state live, the outbox, and
the hooks a run calls (faults, system info, stop and cancel)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.faults import FaultInjector
from agent.migrations.model import Migration
from agent.outbox import Outbox
from agent.runs import RunControl

SystemInfo = Callable[[Path], Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class EngineContext:
    """Migrations run against ``root``; ``journal_path``: the run in flight (see
    :mod:`agent.migrations.journal`); ``backups_dir``: one backup directory per run."""

    root: Path
    journal_path: Path
    backups_dir: Path
    outbox: Outbox
    faults: FaultInjector
    system_info: SystemInfo
    should_stop: Callable[[], bool]
    control: RunControl

    def first_file(self, migration: Migration) -> Path:
        """The first file ``migration`` declares (the root if none): what an event names when
        detection found no file."""
        return next(iter(migration.files(self.root)), self.root)
