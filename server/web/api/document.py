"""``GET /api/v1/openapi.json``: the OpenAPI document (built by ``server.web.api.openapi``)."""

from __future__ import annotations

from aiohttp import web

from server.web.api.openapi import openapi_document


async def openapi(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of the whole ``/api/v1``."""
    return web.json_response(openapi_document())
