"""Config migrations: model, built-in chain, registry, engine, durable file ops, journal."""

from agent.migrations.engine import MigrationEngine, Plan, RunResult, make_plan
from agent.migrations.model import (
    Detected,
    DetectionError,
    DiskView,
    FileOp,
    FileView,
    InputNeeds,
    Inputs,
    InputSpec,
    Migration,
    PlannedView,
    RemoveFile,
    Step,
    WriteFile,
)
from agent.migrations.registry import MigrationRegistry, default_registry

__all__ = [
    "Detected",
    "DetectionError",
    "DiskView",
    "FileOp",
    "FileView",
    "InputNeeds",
    "InputSpec",
    "Inputs",
    "Migration",
    "MigrationEngine",
    "MigrationRegistry",
    "Plan",
    "PlannedView",
    "RemoveFile",
    "RunResult",
    "Step",
    "WriteFile",
    "default_registry",
    "make_plan",
]
