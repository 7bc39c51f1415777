"""Helpers shared by the server-side tests (a uniquely named module: tests/ has no __init__
files, and both tests/conftest.py and tests/agent_tests/conftest.py are imported as ``conftest``,
so nothing should be imported from a conftest by name)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from server.config import ServerConfig
from server.domain import Category, EventStatus, NewEvent, Severity

if TYPE_CHECKING:
    from playwright.async_api import Page


def make_server_config(db_url: str, tmp_path: Path, **overrides: object) -> ServerConfig:
    """A ServerConfig for tests: ``db_url``, ports 0 (the OS picks), state in ``tmp_path``, no
    environment; ``overrides`` on top."""
    from server.config import load_config

    settings: dict[str, object] = {
        "database_url": db_url,
        "grpc_port": 0,
        "web_port": 0,
        "state_dir": tmp_path / "server-state",
    }
    return load_config(env={}, overrides={**settings, **overrides})


@dataclass
class WatchedPage:
    """A chromium page and what went wrong on it: dialogs (an ``alert`` from injected script),
    console errors and page errors (CSP violations show up there), and HTTP error responses."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)


def new_event(agent_id: str, occurred_at: datetime | None = None) -> NewEvent:
    """A valid, already-converted migration event (what ingest hands to storage)."""
    return NewEvent(
        event_id=str(uuid.uuid4()),
        agent_id=agent_id,
        category=Category.MIGRATION,
        event_type="migration_detection",
        status=EventStatus.SUCCESS,
        severity=Severity.SUCCESS,
        message="needs migration",
        error_message="",
        error_detail={},
        migration_from="1",
        migration_to="2",
        run_id=None,
        system_info={},
        occurred_at=occurred_at or datetime.now(UTC),
    )
