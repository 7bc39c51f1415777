"""Render a logged-in page: the template's context plus what the page header shows on every
page (the number of runs waiting for input, linking to them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from server import app_keys
from server.services import inputs as inputs_service


async def render_page(
    template: str, request: web.Request, context: Mapping[str, Any]
) -> web.Response:
    """``aiohttp_jinja2.render_template`` with ``waiting_runs`` (runs in AWAITING_INPUT) added:
    the header's count and the History's banner."""
    waiting = await inputs_service.count_awaiting(request.app[app_keys.SESSIONS])
    return aiohttp_jinja2.render_template(template, request, {**context, "waiting_runs": waiting})
