"""The exceptions of migration specs: an invalid spec, a file that does not parse, a refused
path, and a step that cannot be planned.

Messages never hold a config value: they name files, keys, lines and fields, so any of them can
go into an event or a log as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import EXIT_USAGE, AgentError
from agent.migrations.model import DetectionError


@dataclass(frozen=True, slots=True)
class SpecIssue:
    """One thing wrong with a spec: ``field`` is its path (``steps[1].ops[2].op``, "" for the
    document itself), ``line`` its line in the TOML source (0: unknown, or JSON input)."""

    field: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        prefix = f"line {self.line}: " if self.line else ""
        return f"{prefix}{where}{self.message}"


class SpecError(AgentError):
    """A spec that cannot be used; ``issues`` lists every problem found, in source order."""

    exit_code = EXIT_USAGE
    exception_type = "SpecError"

    def __init__(self, issues: Sequence[SpecIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class FormatError(AgentError):
    """A config file (or a value for one) that its format cannot read or hold; ``line`` is
    1-based, 0 when unknown. ``str(error)`` is ``line N: message`` without a file name: the
    caller knows the file and adds it."""

    exception_type = "ConfigParseError"

    def __init__(self, message: str, line: int = 0) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class PathRefused(AgentError):
    """A spec names files outside the allowed paths (``refused``: spec path, why)."""

    exit_code = EXIT_USAGE
    exception_type = "PathRefused"

    def __init__(self, spec_id: str, refused: Sequence[tuple[str, str]]) -> None:
        self.refused = tuple(refused)
        lines = "; ".join(f"{path}: {why}" for path, why in self.refused)
        super().__init__(f"spec {spec_id}: refused, files outside the allowed paths: {lines}")


class PlanError(DetectionError):
    """A step of a spec cannot be planned on this host: names the step, the op (0-based index
    and name) and the file."""

    def __init__(
        self,
        message: str,
        *,
        step: str,
        op_index: int | None = None,
        op_name: str = "",
        file: str = "",
        path: Path | None = None,
        line: int = 0,
    ) -> None:
        where = f"step {step!r}"
        if op_index is not None:
            where += f" ops[{op_index}] ({op_name})"
        if file:
            where += f" on {file}"
        super().__init__(
            f"{where}: {message}", path=path, line=line, exception_type="SpecPlanError"
        )
        self.step = step
        self.op_index = op_index
        self.op_name = op_name
        self.file = file
