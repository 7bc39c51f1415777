"""Config migrations: model, registry (with the built-in agent-config spec), the engine (plan,
gather inputs, execute with rollback, recover after a crash), durable file ops, journal."""

from agent.migrations.engine import MigrationEngine

# The package's public names, re-exported. Modules of agent.migrations and agent.specs import
# them from model.py, not from here: importing this package from inside it is a cycle.
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
from agent.migrations.plan import Plan, make_plan
from agent.migrations.registry import MigrationRegistry, default_registry
from agent.migrations.result import RunResult

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
