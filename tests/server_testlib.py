"""Helpers shared by the server-side tests (a uniquely named module: tests/ has no __init__
files, and both tests/conftest.py and tests/agent_tests/conftest.py are imported as ``conftest``,
so nothing should be imported from a conftest by name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from server.config import ServerConfig

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
