"""``GET /api/v1/events``: the History as JSON (the History page's filters and cursor)."""

from __future__ import annotations

from aiohttp import web

from server import app_keys
from server.services import history as history_service
from server.web.api.shapes import event_page_json
from server.web.request import parse_event_filter
from server.web.sessions import web_sessions


async def api_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events``: the History as JSON, same filters and cursor."""
    config = request.app[app_keys.CONFIG]
    f = parse_event_filter(request.query, config.history_page_size)
    page = await history_service.list_events(web_sessions(request.app), f)
    return web.json_response(event_page_json(page))
