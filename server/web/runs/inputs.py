"""Answering a waiting run's input request: the run page's form and the JSON API.

- ``POST /runs/{run_id}/inputs`` (form fields ``request_id`` and ``input.<name>``): admin only,
  CSRF-protected (``server.web.auth``); 303 back to the run page with "answers sent".
- ``POST /api/v1/runs/{run_id}/inputs`` (``{"request_id": ..., "inputs": {name: value}}``):
  admin only, CSRF-protected; 202 with the queued ``provide_input`` action (its params are
  ``run_id`` and ``request_id``: answers are never echoed).
- ``GET /api/v1/runs/{run_id}/inputs``: any user; what the run asks for (fields, errors, who
  answered), never an answer.

Thin: validate the shape, call ``server.services.inputs.InputVault`` (which wakes the run's
streams).
Errors (missing field, too long, stale form, not waiting) come from the service and name the
field or the reason, never a value.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import app_keys
from server.domain import PendingAction
from server.errors import InvalidArgument, Unavailable
from server.services import runs as runs_service
from server.services.inputs import InputVault
from server.web.api.shapes import accepted_json, run_inputs_json
from server.web.auth import actor_name
from server.web.request import json_body, path_id
from server.web.runs.styles import run_url
from server.web.sessions import web_sessions

INPUT_FIELD_PREFIX = "input."
MAX_FIELDS = 64  # far above the 16 a request may ask; bounds the work on a hostile body


def _vault(app: web.Application) -> InputVault:
    vault = app[app_keys.SERVICES].inputs
    if vault is None:
        raise Unavailable("answering input requests is not enabled on this server")
    return vault


def _max_body(app: web.Application) -> int:
    # Every answer at its limit, JSON-escaped (up to 6 bytes per byte), plus the envelope.
    return MAX_FIELDS * (6 * app[app_keys.CONFIG].input_max_bytes + 200) + 1024


async def _submit(
    request: web.Request, run_id: str, request_id: str, answers: dict[str, Any]
) -> PendingAction:
    """Both forms of submitting: bound the field count, answer as the logged-in user (the
    service wakes the run's streams)."""
    if len(answers) > MAX_FIELDS:
        raise InvalidArgument(f"at most {MAX_FIELDS} fields", field="inputs")
    app = request.app
    return await _vault(app).submit_answers(
        run_id, request_id, answers, actor_name(request), bus=app.get(app_keys.BUS)
    )


async def submit_form(request: web.Request) -> web.StreamResponse:
    """``POST /runs/{run_id}/inputs``: the run page's form."""
    run_id = path_id(request, "run_id")
    form = await request.post()
    request_id = form.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidArgument("is required (reload the page)", field="request_id")
    answers = {
        name[len(INPUT_FIELD_PREFIX) :]: value if isinstance(value, str) else None
        for name, value in form.items()
        if name.startswith(INPUT_FIELD_PREFIX)
    }
    await _submit(request, run_id, request_id, answers)
    raise web.HTTPSeeOther(f"{run_url(run_id)}?inputs=sent")


async def submit_json(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/runs/{run_id}/inputs``: 202 with the queued ``provide_input`` action."""
    run_id = path_id(request, "run_id")
    body = await json_body(request, _max_body(request.app), allow_empty=False)
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidArgument(
            "is required: the request_id of the run's input request", field="request_id"
        )
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise InvalidArgument("must be an object of field name to value", field="inputs")
    action = await _submit(request, run_id, request_id, inputs)
    return web.json_response(accepted_json(action), status=202)


async def get_inputs(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/runs/{run_id}/inputs``: the run's input request (never an answer)."""
    detail = await runs_service.get_run(web_sessions(request.app), path_id(request, "run_id"))
    return web.json_response(run_inputs_json(detail.run))
