"""The migration specs JSON API: upload and read specs, diff revisions, and ask agents to
preview, run and revert (``server.services.specs``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import app_keys
from server.errors import InvalidArgument
from server.services import specs as specs_service
from server.services.spec_checks import MAX_SOURCE_BYTES
from server.web.api.shapes import accepted_json
from server.web.api.spec_shapes import (
    SpecDiff,
    SpecUploaded,
    preview_json,
    previews_json,
    spec_detail_json,
    spec_list_json,
)
from server.web.auth import actor_name
from server.web.request import json_body, parse_int, path_id, single
from server.web.sessions import web_sessions

TOML_TYPES = frozenset({"application/toml", "text/toml", "text/x-toml"})
MAX_REVISION = 2**31 - 1


def _revision(raw: str, name: str) -> int:
    return parse_int(name, raw, 1, MAX_REVISION)


def _optional_revision(body: dict[str, Any]) -> int | None:
    value = body.get("revision")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_REVISION:
        raise InvalidArgument("must be a positive integer", field="revision")
    return value


async def _spec_body(request: web.Request) -> tuple[str, str]:
    """``(source, format)`` of an upload: TOML text (``application/toml``) or a JSON object."""
    content_type = request.content_type
    if content_type not in TOML_TYPES and content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            reason="Content-Type must be application/toml or application/json"
        )
    raw = await request.content.read(MAX_SOURCE_BYTES + 1)
    if len(raw) > MAX_SOURCE_BYTES:
        raise InvalidArgument(f"must be at most {MAX_SOURCE_BYTES} bytes", field="source")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("must be UTF-8 text", field="source") from None
    return text, "toml" if content_type in TOML_TYPES else "json"


async def list_specs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/migrations``: every spec, its latest revision and hosts per version."""
    specs = await specs_service.list_specs(web_sessions(request.app))
    return web.json_response(spec_list_json(specs))


async def add_spec(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/migrations``: 201 with a new revision, 200 when unchanged."""
    source, fmt = await _spec_body(request)
    spec_id, revision, created = await specs_service.add_spec(
        web_sessions(request.app), source, fmt, actor_name(request)
    )
    body = SpecUploaded(spec_id=spec_id, revision=revision, created=created)
    return web.json_response(body, status=201 if created else 200)


async def get_spec(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/migrations/{spec_id}``: the latest revision, revisions, hosts."""
    spec_id = path_id(request, "spec_id")
    detail = await specs_service.get_spec(web_sessions(request.app), spec_id)
    return web.json_response(spec_detail_json(detail))


async def get_revision(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/migrations/{spec_id}/revisions/{revision}``."""
    spec_id = path_id(request, "spec_id")
    revision = _revision(request.match_info["revision"], "revision")
    detail = await specs_service.get_spec(web_sessions(request.app), spec_id, revision)
    return web.json_response(spec_detail_json(detail))


async def diff_revisions(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/migrations/{spec_id}/diff?from=&to=``: unified diff of two sources."""
    spec_id = path_id(request, "spec_id")
    old = _revision(single(request.query, "from", 16), "from")
    new = _revision(single(request.query, "to", 16), "to")
    diff = await specs_service.diff_revisions(web_sessions(request.app), spec_id, old, new)
    return web.json_response(
        SpecDiff(spec_id=spec_id, from_revision=old, to_revision=new, diff=diff)
    )


async def request_preview(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/migrations/{spec_id}/preview``: 202, one action per agent."""
    spec_id = path_id(request, "spec_id")
    body = await json_body(request, allow_empty=False)
    agent_ids = body.get("agent_ids")
    if not isinstance(agent_ids, list) or not all(isinstance(a, str) for a in agent_ids):
        raise InvalidArgument("must be a list of agent ids", field="agent_ids")
    app = request.app
    actions = await specs_service.request_preview(
        web_sessions(app),
        app[app_keys.CONFIG],
        spec_id,
        agent_ids,
        actor_name(request),
        _optional_revision(body),
    )
    return web.json_response(previews_json(actions), status=202)


async def get_preview(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/previews/{action_id}``: the agent's diffs, or ``pending``."""
    action_id = path_id(request, "action_id")
    result = await specs_service.get_preview(web_sessions(request.app), action_id)
    return web.json_response(preview_json(result))


async def request_run(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/migrations/{spec_id}/run``: 202 with the ``run_migration`` action."""
    spec_id = path_id(request, "spec_id")
    body = await json_body(request, allow_empty=False)
    agent_id = body.get("agent_id")
    if not isinstance(agent_id, str) or not agent_id:
        raise InvalidArgument("is required (an agent id)", field="agent_id")
    app = request.app
    action = await specs_service.request_run(
        web_sessions(app),
        app[app_keys.CONFIG],
        spec_id,
        agent_id,
        actor_name(request),
        _optional_revision(body),
    )
    return web.json_response(accepted_json(action), status=202)


async def request_revert(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/runs/{run_id}/revert``: 202 with the ``revert_run`` action."""
    run_id = path_id(request, "run_id")
    await json_body(request)
    app = request.app
    action = await specs_service.request_revert(
        web_sessions(app), app[app_keys.CONFIG], run_id, actor_name(request)
    )
    return web.json_response(accepted_json(action), status=202)
