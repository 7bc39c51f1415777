"""Request helpers shared by every handler: path ids and query parsing with named errors.

A bad value raises :class:`server.errors.InvalidArgument` naming the parameter (a 400, mapped by
``server.web.middleware``).
"""

from __future__ import annotations

from aiohttp import web

from server.errors import InvalidArgument

MAX_ID = 64


def path_id(request: web.Request, name: str) -> str:
    """A path parameter that must look like an id (printable, bounded) or a 400 naming it."""
    value = request.match_info[name]
    if not value or len(value) > MAX_ID or not value.isprintable():
        raise InvalidArgument("is not a valid id", field=name)
    return value
