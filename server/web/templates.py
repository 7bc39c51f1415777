"""Templates glue: render a logged-in page (its context plus what the header shows on every
page), and call a template's macro from Python (the streams and fragments render rows with the
page's own macros, so they are escaped exactly like the page)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from server.services import inputs as inputs_service
from server.web.sessions import web_sessions


async def render_page(
    template: str, request: web.Request, context: Mapping[str, Any]
) -> web.Response:
    """``aiohttp_jinja2.render_template`` with ``waiting_runs`` (runs in AWAITING_INPUT) added:
    the header's count and the History's banner."""
    waiting = await inputs_service.count_awaiting(web_sessions(request.app))
    return aiohttp_jinja2.render_template(template, request, {**context, "waiting_runs": waiting})


def template_macro(app: web.Application, name: str, template: str) -> Any:
    """A macro of one of the app's templates, callable from Python (returns Markup)."""
    module = aiohttp_jinja2.get_env(app).get_template(template).module
    return getattr(module, name)
