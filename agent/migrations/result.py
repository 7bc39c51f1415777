"""What one attempt at a migration recorded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import events
from flagpost.v1 import agent_pb2


@dataclass(frozen=True, slots=True)
class RunResult:
    """The events one attempt recorded (``execution`` None when nothing had to be executed)."""

    run_id: str
    migration_id: str
    detection: agent_pb2.MigrationEvent | None
    execution: agent_pb2.MigrationEvent | None
    detected_version: str
    backup_dir: Path | None = None
    waiting: bool = False  # the run waits for input (the agent stopped, or did not wait)

    @property
    def failed(self) -> bool:
        failed = (events.FAILED, events.PARTIAL)
        if self.execution is not None:
            return bool(self.execution.status in failed)
        return self.detection is not None and self.detection.status in failed
