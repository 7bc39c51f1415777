"""The agent's exception tree: one root, exit codes, and the error detail events report."""

from __future__ import annotations

import ast
import errno
import importlib
from pathlib import Path

import grpc

import agent
from agent.config import AgentConfigError
from agent.errors import EXIT_FAILED, EXIT_USAGE, AgentError, error_info
from agent.migrations.model import DetectionError
from agent.migrations.verifier import VerifierError
from agent.tls import ChannelError

AGENT_DIR = Path(agent.__file__).parent


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a module under agent/ (found by reading the source)."""
    found: list[type[BaseException]] = []
    for path in sorted(AGENT_DIR.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        relative = path.relative_to(AGENT_DIR.parent).with_suffix("")
        module_name = ".".join(relative.parts).removesuffix(".__init__")
        module = importlib.import_module(module_name)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                value = getattr(module, node.name)
                if isinstance(value, type) and issubclass(value, BaseException):
                    found.append(value)
    return found


def test_every_agent_exception_derives_from_agent_error() -> None:
    classes = _exception_classes()
    assert len(classes) >= 12
    assert [cls.__qualname__ for cls in classes if not issubclass(cls, AgentError)] == []


def test_exit_codes_and_kept_bases() -> None:
    assert AgentConfigError.exit_code == EXIT_USAGE
    assert DetectionError.exit_code == EXIT_FAILED
    assert issubclass(ChannelError, grpc.RpcError)
    assert issubclass(VerifierError, ValueError)


def test_error_info_of_agent_errors_and_os_errors() -> None:
    detection = DetectionError(
        "bad", path=Path("/etc/a.conf"), line=7, errno=errno.EACCES, exception_type="Parse"
    )
    info = error_info(detection)
    assert (info.file_path, info.line, info.errno_name, info.exception_type) == (
        "/etc/a.conf",
        7,
        "EACCES",
        "Parse",
    )
    assert detection.errno_name == "EACCES"
    os_error = error_info(PermissionError(errno.EACCES, "Permission denied", "/etc/b.conf"))
    assert (os_error.file_path, os_error.errno, os_error.exception_type) == (
        "/etc/b.conf",
        errno.EACCES,
        "PermissionError",
    )
    assert error_info(AgentConfigError("x")).exception_type == "AgentConfigError"
    assert error_info(KeyError("k")).exception_type == "KeyError"
