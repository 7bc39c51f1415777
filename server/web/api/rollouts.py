"""The rollouts JSON API: create, list, show, pause, resume, abort
(``server.services.rollouts``). A change wakes this process's scheduler, so it acts at once."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import app_keys
from server.errors import InvalidArgument
from server.services import rollouts as rollouts_service
from server.waves import parse_duration, parse_rate
from server.web.api.rollout_shapes import rollout_detail_json, rollout_json, rollout_list_json
from server.web.auth import actor_name
from server.web.request import json_body, parse_int, path_id, single
from server.web.sessions import web_sessions

MAX_LIST_ITEMS = 32


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST_ITEMS
        or not all(isinstance(item, str) for item in value)
    ):
        raise InvalidArgument(f"must be a list of at most {MAX_LIST_ITEMS} strings", field=name)
    return value


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument("must be a string", field=name)
    return value


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument("must be an integer", field=name)
    return value


def _wake(request: web.Request) -> None:
    scheduler = request.app.get(app_keys.ROLLOUTS)
    if scheduler is not None:
        scheduler.wake()


async def list_rollouts(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/rollouts?limit=``: newest first."""
    raw = single(request.query, "limit", 8)
    limit = parse_int("limit", raw, 1, rollouts_service.MAX_LIST) if raw else 100
    found = await rollouts_service.list_rollouts(web_sessions(request.app), limit)
    return web.json_response(rollout_list_json(found))


async def create_rollout(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/rollouts``: 201 with the new (RUNNING) rollout."""
    body = await json_body(request, allow_empty=False)
    spec_id = _text(body, "spec_id")
    if not spec_id:
        raise InvalidArgument("is required (a spec id)", field="spec_id")
    rate = _text(body, "max_failure_rate")
    soak = _text(body, "soak")
    timeout = _text(body, "wave_timeout")
    waves = _strings(body, "waves")
    revision = _int(body, "revision")
    if revision is not None and revision < 1:
        raise InvalidArgument("must be a positive integer", field="revision")
    created = await rollouts_service.create_rollout(
        web_sessions(request.app),
        request.app[app_keys.CONFIG],
        spec_id,
        actor_name(request),
        revision=revision,
        selector=_strings(body, "select") or [],
        waves=waves if waves is not None else rollouts_service.DEFAULT_WAVES,
        max_failure_rate=None if rate is None else parse_rate(rate),
        max_failures=_int(body, "max_failures"),
        soak_seconds=0 if soak is None else parse_duration(soak, "soak"),
        wave_timeout_seconds=(
            rollouts_service.DEFAULT_WAVE_TIMEOUT_SECONDS
            if timeout is None
            else parse_duration(timeout, "wave_timeout")
        ),
    )
    _wake(request)
    return web.json_response(rollout_json(created), status=201)


async def get_rollout(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/rollouts/{rollout_id}``: waves with their counts, transitions, hosts."""
    rollout_id = path_id(request, "rollout_id")
    detail = await rollouts_service.get_rollout(web_sessions(request.app), rollout_id)
    return web.json_response(rollout_detail_json(detail))


async def _reason(request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    if _text(body, "reason") is None:
        body["reason"] = ""
    return body


async def pause(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/rollouts/{rollout_id}/pause``."""
    rollout_id = path_id(request, "rollout_id")
    body = await _reason(request)
    changed = await rollouts_service.pause(
        web_sessions(request.app), rollout_id, actor_name(request), body["reason"]
    )
    _wake(request)
    return web.json_response(rollout_json(changed))


async def resume(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/rollouts/{rollout_id}/resume`` (HALTED: ``reason`` required)."""
    rollout_id = path_id(request, "rollout_id")
    body = await _reason(request)
    changed = await rollouts_service.resume(
        web_sessions(request.app), rollout_id, actor_name(request), body["reason"]
    )
    _wake(request)
    return web.json_response(rollout_json(changed))


async def abort(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/rollouts/{rollout_id}/abort`` (``revert``: also revert its hosts)."""
    rollout_id = path_id(request, "rollout_id")
    body = await _reason(request)
    revert = body.get("revert", False)
    if not isinstance(revert, bool):
        raise InvalidArgument("must be true or false", field="revert")
    changed = await rollouts_service.abort(
        web_sessions(request.app),
        rollout_id,
        actor_name(request),
        revert=revert,
        reason=body["reason"],
    )
    _wake(request)
    return web.json_response(rollout_json(changed))
