"""The web's database sessions: its own pool (``server.storage.db.create_web_engine``), apart
from the one agent authentication and ingest use."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server import app_keys


def web_sessions(app: web.Application) -> async_sessionmaker[AsyncSession]:
    """The sessionmaker web handlers use: ``app_keys.WEB_SESSIONS``; an app assembled without
    ``server.app``'s database context (one engine only) falls back to ``app_keys.SESSIONS``."""
    sessions = app.get(app_keys.WEB_SESSIONS)
    return sessions if sessions is not None else app[app_keys.SESSIONS]
