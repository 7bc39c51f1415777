"""HTML handlers of the migrations pages: ``/migrations`` (specs + the admin's upload form),
``/migrations/{spec_id}`` (source, revisions, diff, hosts per version, Preview / Run forms), the
preview result page and the page that waits for a requested run.

Thin: parse and validate the form or query, call the specs service
(:mod:`server.services.specs`), build view models, render. The POSTs are same-origin form posts
(admin session + CSRF token, ``server.web.auth``) that redirect (303) to the page showing the
outcome. An invalid upload re-renders the form (400) with the validator's words, the text kept;
a bad revision number in a spec page's query shows that page (400), the error next to its field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy, MultiMapping

from server import app_keys
from server.errors import InvalidArgument
from server.services import action_notices
from server.services import history as history_service
from server.services import specs as specs_service
from server.services.action_notices import Unanswered
from server.services.spec_checks import MAX_SOURCE_BYTES
from server.web.auth import actor_name, current_user
from server.web.fleet.views import agent_url
from server.web.forms import Option
from server.web.migrations.views import (
    PreviewsPage,
    RevisionDiff,
    SpecDetailPage,
    SpecRunWaitPage,
    UploadForm,
    diff_lines,
    migrations_page,
    preview_url,
    preview_view,
    spec_page,
    spec_run_url,
    spec_url,
)
from server.web.refused import parse_dropping_refused, refused_status
from server.web.request import clean_text, parse_int, path_id, single
from server.web.runs.styles import run_url
from server.web.sessions import web_sessions
from server.web.templates import render_page

Form = MultiDictProxy[str | bytes | bytearray | web.FileField]
REFRESH_SECONDS = 2
MAX_REVISION = 2**31 - 1
MAX_PREVIEW_ACTIONS = specs_service.MAX_PREVIEW_AGENTS
FORMATS = ("toml", "json")
AGENT_ID_SEPARATORS = re.compile(r"[\s,]+")


# --------------------------------------------------------------------------- /migrations


async def _render_list(
    request: web.Request, form: UploadForm | None = None, notice: str = ""
) -> web.Response:
    specs = await specs_service.list_specs(web_sessions(request.app))
    view = migrations_page(specs, datetime.now(UTC), form, notice)
    return await render_page("migrations.html", request, {"page": view})


async def migrations(request: web.Request) -> web.StreamResponse:
    """``GET /migrations``: every spec with its latest revision, target and hosts per version;
    admins also get the upload form."""
    notice = ""
    added = single(request.query, "added", 80)
    if added:
        notice = f"Saved {added}."
    return await _render_list(request, notice=notice)


def _format_of(form: Form, filename: str) -> str:
    raw = form.get("format")
    chosen = raw.strip().lower() if isinstance(raw, str) else ""
    if filename.lower().endswith(".json"):
        return "json"
    if filename.lower().endswith(".toml"):
        return "toml"
    return chosen if chosen in FORMATS else "toml"


def _uploaded_text(form: Form) -> tuple[str, str]:
    """``(source, filename)``: the chosen file's text when a file was sent, else the textarea."""
    upload = form.get("file")
    if isinstance(upload, web.FileField) and upload.filename:
        data = upload.file.read(MAX_SOURCE_BYTES + 1)
        try:
            return data.decode("utf-8"), upload.filename
        except UnicodeDecodeError:
            raise InvalidArgument("must be UTF-8 text", field="file") from None
    text = form.get("text")
    return (text if isinstance(text, str) else ""), ""


async def upload_spec(request: web.Request) -> web.StreamResponse:
    """``POST /migrations`` (the upload form, multipart): validate and store the spec as a new
    revision, then open it; an invalid spec shows the form again with the validator's issues."""
    form = await request.post()
    source, filename = _uploaded_text(form)
    fmt = _format_of(form, filename)
    try:
        if not source.strip():
            raise InvalidArgument("is empty: paste a spec or choose a file", field="text")
        source = clean_text("text", source, None)
        spec_id, revision, created = await specs_service.add_spec(
            web_sessions(request.app), source, fmt, actor_name(request)
        )
    except InvalidArgument as exc:
        kept = UploadForm(text=source, format=fmt, errors=tuple(exc.message.splitlines()))
        response = await _render_list(request, kept)
        response.set_status(400)
        return response
    query = urlencode([("revision", str(revision)), ("saved", "new" if created else "same")])
    raise web.HTTPSeeOther(f"{spec_url(spec_id)}?{query}")


# --------------------------------------------------------------------------- /migrations/{id}


def _revision_param(query: MultiMapping[str], name: str) -> int | None:
    raw = single(query, name, 12)
    return parse_int(name, raw, 1, MAX_REVISION) if raw else None


def _revisions(query: MultiMapping[str]) -> tuple[int | None, int | None, int | None]:
    """The spec page's ``revision``, ``diff_from`` and ``diff_to`` (None: not given)."""
    return (
        _revision_param(query, "revision"),
        _revision_param(query, "diff_from"),
        _revision_param(query, "diff_to"),
    )


async def spec_detail(request: web.Request) -> web.StreamResponse:
    """``GET /migrations/{spec_id}``: one revision (``?revision=N``, default the latest) with
    line numbers, every revision, a diff (``diff_from`` / ``diff_to``), hosts per version and,
    for admins, the Preview and Run forms. A bad revision number shows the page (400) with the
    others applied, the error next to its field."""
    sessions = web_sessions(request.app)
    spec_id = path_id(request, "spec_id")
    (revision, old, new), refused = parse_dropping_refused(request.query, _revisions)
    detail = await specs_service.get_spec(sessions, spec_id, revision)  # NotFound -> 404
    diff = None
    if old is not None and new is not None:
        text = await specs_service.diff_revisions(sessions, spec_id, old, new)
        diff = RevisionDiff(old, new, diff_lines(text))
    saved = {
        "new": f"Saved as revision {detail.spec.revision}.",
        "same": f"Unchanged: the upload equals revision {detail.spec.revision}.",
    }.get(request.query.get("saved", ""), "")
    user = current_user(request)
    # Only admins get the Preview / Run forms, which offer every agent (or, for a fleet too
    # large to list, take agent ids).
    agents = await history_service.list_agent_choices(sessions) if user and user.is_admin else []
    view = SpecDetailPage(
        spec=spec_page(detail, datetime.now(UTC), diff=diff),
        agents=None
        if agents is None
        else tuple(Option(agent_id, host or agent_id, False) for agent_id, host in agents),
        saved=saved,
        refused=refused,
    )
    return refused_status(await render_page("migration.html", request, {"page": view}), refused)


def _revision_field(form: Form) -> int | None:
    raw = form.get("revision")
    if not isinstance(raw, str) or not raw.strip():
        return None
    return parse_int("revision", raw.strip(), 1, MAX_REVISION)


async def request_preview(request: web.Request) -> web.StreamResponse:
    """``POST /migrations/{spec_id}/previews`` (the Preview form): one ``preview_migration``
    action per chosen agent, then the preview result page of those actions."""
    app = request.app
    spec_id = path_id(request, "spec_id")
    form = await request.post()
    # checked boxes, or the ids typed into the field a large fleet gets (spaces or commas)
    agent_ids = [
        part
        for value in form.getall("agent", [])
        if isinstance(value, str)
        for part in AGENT_ID_SEPARATORS.split(value)
        if part
    ]
    if not agent_ids:
        raise InvalidArgument("choose at least one agent to preview on", field="agent")
    actions = await specs_service.request_preview(
        web_sessions(app),
        app[app_keys.CONFIG],
        spec_id,
        agent_ids,
        actor_name(request),
        _revision_field(form),
    )
    raise web.HTTPSeeOther(preview_url(spec_id, [a.action_id for a in actions]))


async def previews(request: web.Request) -> web.StreamResponse:
    """``GET /migrations/{spec_id}/previews?action=…``: each host's preview (classed unified
    diffs, already redacted by the agent); hosts that have not answered show as waiting and
    the page reloads itself every few seconds until all have."""
    sessions = web_sessions(request.app)
    spec_id = path_id(request, "spec_id")
    action_ids = list(dict.fromkeys(request.query.getall("action", [])))
    if not action_ids or len(action_ids) > MAX_PREVIEW_ACTIONS:
        raise InvalidArgument(f"give 1 to {MAX_PREVIEW_ACTIONS} preview ids", field="action")
    results = [
        await specs_service.get_preview(sessions, clean_text("action", a, 64)) for a in action_ids
    ]
    if any(r.spec_id != spec_id for r in results):
        raise InvalidArgument(f"is not a preview of spec {spec_id}", field="action")
    hosts = await history_service.hostnames_of(sessions, [r.agent_id for r in results])
    revision = results[0].spec_revision
    detail = await specs_service.get_spec(sessions, spec_id, revision)
    built = []
    for r in results:
        end = (
            await action_notices.action_end(sessions, r.agent_id, r.action_id)
            if r.pending
            else None
        )
        refused = end.message if end is not None and end.kind == Unanswered.REFUSED else None
        built.append(preview_view(r, hosts.get(r.agent_id, ""), refused))
    views = tuple(built)
    page = PreviewsPage(
        spec_id=spec_id,
        spec_url=spec_url(spec_id, revision),
        title=detail.spec.title,
        revision=revision,
        previews=views,
        pending=sum(1 for v in views if v.pending),
        refresh_seconds=REFRESH_SECONDS,
    )
    return await render_page("migration_previews.html", request, {"page": page})


async def request_run(request: web.Request) -> web.StreamResponse:
    """``POST /migrations/{spec_id}/runs`` (the Run form): a ``run_migration`` action for the
    chosen agent, then the page that waits for the agent to report the run."""
    app = request.app
    spec_id = path_id(request, "spec_id")
    form = await request.post()
    agent_id = form.get("agent")
    if not isinstance(agent_id, str) or not agent_id:
        raise InvalidArgument("choose the agent to run on", field="agent")
    action = await specs_service.request_run(
        web_sessions(app),
        app[app_keys.CONFIG],
        spec_id,
        agent_id,
        actor_name(request),
        _revision_field(form),
    )
    query = urlencode(
        [("agent", action.agent_id), ("revision", action.params.get("spec_revision", ""))]
    )
    raise web.HTTPSeeOther(f"{spec_run_url(spec_id, action.action_id)}?{query}")


async def spec_run(request: web.Request) -> web.StreamResponse:
    """``GET /migrations/{spec_id}/runs/{action_id}``: the run page of the run the agent
    started for this action, once it has reported it (303); until then a "waiting for the
    agent" page that reloads itself (``agent``: whose hostname it names)."""
    sessions = web_sessions(request.app)
    spec_id = path_id(request, "spec_id")
    action_id = path_id(request, "action_id")
    agent_id = single(request.query, "agent", 64)
    run = await specs_service.run_for_action(sessions, action_id)
    if run is not None:
        raise web.HTTPSeeOther(run_url(run.id))
    revision = _revision_param(request.query, "revision")
    detail = await specs_service.get_spec(sessions, spec_id, revision)
    hosts = await history_service.hostnames_of(sessions, [agent_id] if agent_id else [])
    end = await action_notices.action_end(sessions, agent_id, action_id) if agent_id else None
    page = SpecRunWaitPage(
        spec_id=spec_id,
        spec_url=spec_url(spec_id, detail.spec.revision),
        title=detail.spec.title,
        revision=detail.spec.revision,
        action_id=action_id,
        hostname=hosts.get(agent_id, agent_id) if agent_id else "",
        agent_url=agent_url(agent_id) if agent_id else "",
        refresh_seconds=REFRESH_SECONDS,
        refused=end.message if end is not None and end.kind == Unanswered.REFUSED else "",
        not_needed=end.message if end is not None and end.kind == Unanswered.NOT_NEEDED else "",
    )
    return await render_page("migration_run_wait.html", request, {"page": page})


async def request_revert(request: web.Request) -> web.StreamResponse:
    """``POST /runs/{run_id}/revert`` (the run page's Revert button on a succeeded spec run):
    queue a ``revert_run`` action, and go back to the run page."""
    app = request.app
    run_id = path_id(request, "run_id")
    action = await specs_service.request_revert(
        web_sessions(app), app[app_keys.CONFIG], run_id, actor_name(request)
    )
    query = urlencode([("revert", "requested"), ("revert_action", action.action_id)])
    raise web.HTTPSeeOther(f"{run_url(run_id)}?{query}")
