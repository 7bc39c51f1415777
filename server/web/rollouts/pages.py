"""HTML handlers of the rollouts pages: ``/rollouts`` (newest first), ``/rollouts/new`` (the
admin's form), ``/rollouts/{rollout_id}`` (waves, gates, hosts, transitions; live through
``web/static/rollout.js`` polling ``GET /api/v1/rollouts/{rollout_id}``) and the form posts that
create, pause, resume and abort one.

Thin: parse the form or query, call the rollouts service (:mod:`server.services.rollouts`),
build view models, render. The POSTs are same-origin form posts (admin session + CSRF token,
``server.web.auth``) that redirect (303) to the rollout's page. An invalid new-rollout form is
shown again (400) with the error naming its field and what was typed kept.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiDictProxy

from server import app_keys
from server.errors import InvalidArgument, NotFound
from server.services import rollouts as rollouts_service
from server.services import specs as specs_service
from server.waves import parse_duration, parse_rate, split_list
from server.web.auth import actor_name
from server.web.request import (
    MAX_SPEC_ID,
    clean_text,
    parse_bool,
    parse_int,
    path_id,
    single,
)
from server.web.rollouts.views import (
    RolloutForm,
    new_rollout_page,
    rollout_page,
    rollout_url,
    rollouts_page,
)
from server.web.sessions import web_sessions
from server.web.templates import render_page

Form = MultiDictProxy[str | bytes | bytearray | web.FileField]
MAX_REVISION = 2**31 - 1
MAX_FAILURES = 2**31 - 1
MAX_SELECT = 4000
MAX_SETTING = 200
# The service's field names -> the form's (the others are the same).
_FORM_FIELDS = {"soak_seconds": "soak", "wave_timeout_seconds": "wave_timeout"}


def _wake(request: web.Request) -> None:
    """Let this process's scheduler act on the change at once."""
    scheduler = request.app.get(app_keys.ROLLOUTS)
    if scheduler is not None:
        scheduler.wake()


# --------------------------------------------------------------------------- /rollouts


async def rollouts(request: web.Request) -> web.StreamResponse:
    """``GET /rollouts``: every rollout, newest first (admins also get "New rollout")."""
    found = await rollouts_service.list_rollouts(web_sessions(request.app))
    view = rollouts_page(found, datetime.now(UTC))
    return await render_page("rollouts.html", request, {"page": view})


# --------------------------------------------------------------------------- /rollouts/new


async def _render_form(request: web.Request, form: RolloutForm) -> web.Response:
    specs = await specs_service.list_specs(web_sessions(request.app))
    view = new_rollout_page(specs, form)
    return await render_page("rollout_new.html", request, {"page": view})


async def new_rollout(request: web.Request) -> web.StreamResponse:
    """``GET /rollouts/new?spec=ID``: the new-rollout form (``spec`` preselected)."""
    return await _render_form(request, RolloutForm(spec_id=single(request.query, "spec", 64)))


def _field(form: Form, name: str, limit: int = MAX_SETTING) -> str:
    raw = form.get(name)
    return clean_text(name, raw, limit) if isinstance(raw, str) else ""


def _typed(form: Form) -> RolloutForm:
    """What the form sent, each value cleaned (InvalidArgument naming the field otherwise)."""
    return RolloutForm(
        spec_id=_field(form, "spec_id", MAX_SPEC_ID),
        revision=_field(form, "revision", 12),
        select=_field(form, "select", MAX_SELECT),
        waves=_field(form, "waves"),
        max_failure_rate=_field(form, "max_failure_rate", 20),
        max_failures=_field(form, "max_failures", 12),
        soak=_field(form, "soak", 20),
        wave_timeout=_field(form, "wave_timeout", 20),
    )


async def _create(request: web.Request, typed: RolloutForm) -> str:
    """Create the rollout ``typed`` describes; its id."""
    if not typed.spec_id:
        raise InvalidArgument("choose the spec to roll out", field="spec_id")
    revision = parse_int("revision", typed.revision, 1, MAX_REVISION) if typed.revision else None
    max_failures = (
        parse_int("max_failures", typed.max_failures, 0, MAX_FAILURES)
        if typed.max_failures
        else None
    )
    try:
        created = await rollouts_service.create_rollout(
            web_sessions(request.app),
            request.app[app_keys.CONFIG],
            typed.spec_id,
            actor_name(request),
            revision=revision,
            selector=[typed.select] if typed.select else [],
            waves=split_list(typed.waves),
            max_failure_rate=parse_rate(typed.max_failure_rate) if typed.max_failure_rate else None,
            max_failures=max_failures,
            soak_seconds=parse_duration(typed.soak or "0", "soak"),
            wave_timeout_seconds=(
                parse_duration(typed.wave_timeout, "wave_timeout")
                if typed.wave_timeout
                else rollouts_service.DEFAULT_WAVE_TIMEOUT_SECONDS
            ),
        )
    except NotFound as exc:  # an unknown spec or revision: the form says which
        raise InvalidArgument(exc.message, field="revision" if revision else "spec_id") from None
    return created.id


async def create_rollout(request: web.Request) -> web.StreamResponse:
    """``POST /rollouts`` (the new-rollout form): create a RUNNING rollout and open its page;
    a bad value shows the form again with the error naming the field."""
    form = await request.post()
    typed = RolloutForm()
    try:
        typed = _typed(form)
        rollout_id = await _create(request, typed)
    except InvalidArgument as exc:
        field = exc.field or ""
        field = "select" if field.startswith("select") else _FORM_FIELDS.get(field, field)
        kept = replace(typed, error=exc.detail, field=field)
        response = await _render_form(request, kept)
        response.set_status(400)
        return response
    _wake(request)
    raise web.HTTPSeeOther(rollout_url(rollout_id))


# --------------------------------------------------------------------------- /rollouts/{id}


async def rollout(request: web.Request) -> web.StreamResponse:
    """``GET /rollouts/{rollout_id}``: the rollout with its waves' counts and failure-rate
    bars against the gate, its hosts and transitions; admins get the buttons its state
    allows."""
    rollout_id = path_id(request, "rollout_id")
    return await _render_rollout(request, rollout_id)


async def _render_rollout(request: web.Request, rollout_id: str, error: str = "") -> web.Response:
    detail = await rollouts_service.get_rollout(web_sessions(request.app), rollout_id)
    view = rollout_page(detail, datetime.now(UTC), error)
    return await render_page("rollout.html", request, {"page": view})


async def _reason(request: web.Request) -> str:
    form = await request.post()
    return _field(form, "reason", rollouts_service.MAX_REASON * 2)


async def pause(request: web.Request) -> web.StreamResponse:
    """``POST /rollouts/{rollout_id}/pause`` (the Pause button)."""
    rollout_id = path_id(request, "rollout_id")
    reason = await _reason(request)
    changed = await rollouts_service.pause(
        web_sessions(request.app), rollout_id, actor_name(request), reason
    )
    _wake(request)
    raise web.HTTPSeeOther(rollout_url(changed.id))


async def resume(request: web.Request) -> web.StreamResponse:
    """``POST /rollouts/{rollout_id}/resume`` (the Resume button; HALTED needs ``reason``: the
    page is shown again (400) with the error next to the field)."""
    rollout_id = path_id(request, "rollout_id")
    try:
        reason = await _reason(request)
        changed = await rollouts_service.resume(
            web_sessions(request.app), rollout_id, actor_name(request), reason
        )
    except InvalidArgument as exc:
        response = await _render_rollout(request, rollout_id, exc.message)
        response.set_status(400)
        return response
    _wake(request)
    raise web.HTTPSeeOther(rollout_url(changed.id))


async def abort(request: web.Request) -> web.StreamResponse:
    """``POST /rollouts/{rollout_id}/abort`` (Abort; ``revert=1``: Abort and revert)."""
    rollout_id = path_id(request, "rollout_id")
    form = await request.post()
    revert = parse_bool("revert", _field(form, "revert", 8))
    changed = await rollouts_service.abort(
        web_sessions(request.app),
        rollout_id,
        actor_name(request),
        revert=revert,
        reason=_field(form, "reason", rollouts_service.MAX_REASON * 2),
    )
    _wake(request)
    raise web.HTTPSeeOther(rollout_url(changed.id))
