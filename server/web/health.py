"""Operations endpoints: ``/healthz`` (load balancers) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from aiohttp import web

from server import app_keys
from server.metrics import CONTENT_TYPE
from server.services import history as history_service


async def healthz(request: web.Request) -> web.StreamResponse:
    """``GET /healthz``: 200 while the health monitor sees the database up and it answers
    ``SELECT 1`` now; 503 otherwise (e.g. SQLite locked by another process, PostgreSQL down)."""
    if request.app[app_keys.HEALTH].available and await history_service.database_ok(
        request.app[app_keys.ENGINE]
    ):
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)


async def metrics(request: web.Request) -> web.StreamResponse:
    """``GET /metrics``: the Prometheus text exposition of this app's ``ServerMetrics``, to a
    logged-in user or a scraper with the ``metrics_token_file`` bearer token."""
    body = request.app[app_keys.METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
