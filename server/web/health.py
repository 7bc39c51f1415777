"""Operations endpoints: ``/healthz`` (load balancers) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from aiohttp import web

from server import app_keys
from server.metrics import CONTENT_TYPE
from server.services import history as history_service
from server.services.health import describe


async def healthz(request: web.Request) -> web.StreamResponse:
    """``GET /healthz``: 200 ``{"status": "ok"}`` while the health monitor sees the database
    up and it answers ``SELECT 1`` now; otherwise 503 ``{"status": "unavailable", "database":
    CAUSE, "detail": ...}`` with CAUSE one of ``server.storage.faults.DbFault`` ("disk full",
    "read-only", "locked", "unreachable", "timeout", "other")."""
    health = request.app[app_keys.HEALTH]
    if health.available and await history_service.database_ok(request.app[app_keys.ENGINE]):
        return web.json_response({"status": "ok"})
    fault = health.fault if not health.available and health.fault is not None else None
    cause = str(fault) if fault is not None else "unreachable"
    detail = describe(fault) if fault is not None else "database unavailable: unreachable"
    return web.json_response(
        {"status": "unavailable", "database": cause, "detail": detail}, status=503
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    """``GET /metrics``: the Prometheus text exposition of this app's ``ServerMetrics``, to a
    logged-in user or a scraper with the ``metrics_token_file`` bearer token."""
    body = request.app[app_keys.METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
