"""The OpenAPI 3.1 document of the whole ``/api/v1`` and of ``POST /login`` / ``/logout``
(served at ``/api/v1/openapi.json``).

Nothing here repeats a shape: request and response bodies are the ``TypedDict`` classes of
``server.web.api.shapes`` and query parameters the declarations of ``server.web.request``, both
turned into JSON Schema by ``server.web.schema`` (enums from ``server.domain``). What is written
here is the part only a document has: paths, summaries, which statuses each operation answers.
Tests: ``tests/test_openapi.py`` (every ``/api/v1`` route of the app is described here and
nothing else), ``tests/test_api_conformance.py`` (real responses match the document).
"""

from __future__ import annotations

from types import GenericAlias
from typing import Annotated, Any, NotRequired, TypedDict

from server import __version__ as SERVER_VERSION
from server.web.api import rollout_shapes, shapes, spec_shapes, webhook_shapes
from server.web.request import (
    EVENT_EXPORT_QUERY,
    EVENT_QUERY,
    LOG_QUERY,
    RUN_EXPORT_QUERY,
    RUN_QUERY,
    SELECT_COUNT_QUERY,
    SELECT_QUERY,
    QueryParam,
)
from server.web.schema import Doc, SchemaBuilder, Uuid

JSON = "application/json"
CSV = "text/csv"
JSON_LINES = "application/x-ndjson"
_FORM = "application/x-www-form-urlencoded"
_HTML = {"text/html": {"schema": {"type": "string"}}}
_ERRORS = {
    400: "invalid parameter (the message names it)",
    404: "not found",
    409: "conflict (e.g. the run already ended, the agent is revoked)",
    415: "Content-Type is not application/json (an upload: not application/toml or JSON)",
    503: "the database is unavailable; retry",
}
_JSON_BODY_NOTE = (
    "Requires `Content-Type: application/json` so a cross-site form cannot trigger it, a "
    "session of an admin, and its CSRF token in `X-CSRF-Token`."
)


class LoginForm(TypedDict):
    """The form of ``POST /login``."""

    name: Annotated[str, Doc(maxLength=64)]
    password: Annotated[str, Doc(maxLength=1024)]
    csrf_token: str
    next: NotRequired[Annotated[str, Doc(description="a local path")]]


class LogoutForm(TypedDict):
    """The form of ``POST /logout`` (or the token in ``X-CSRF-Token``)."""

    csrf_token: NotRequired[str]


SECURITY_SCHEMES: dict[str, Any] = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "flagpost_session",
        "description": "set by `POST /login`; HttpOnly, SameSite=Strict, Secure under TLS",
    },
    "csrf": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": 'the page\'s `<meta name="csrf-token">`; required on every POST',
    },
}


class _Document:
    """Builds one document; ``schemas`` collects every shape an operation refers to."""

    def __init__(self) -> None:
        self.schemas = SchemaBuilder()

    def query(self, params: tuple[QueryParam, ...]) -> list[dict[str, Any]]:
        out = []
        for param in params:
            body: dict[str, Any] = {
                "name": param.name,
                "in": "query",
                "required": False,
                "schema": self.schemas.schema(
                    GenericAlias(list, (param.type,)) if param.repeat else param.type
                ),
            }
            if param.repeat:
                body.update(style="form", explode=True)
            if param.description:
                body["description"] = param.description
            out.append(body)
        return out

    def path_id(self, name: str, tp: Any = str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": self.schemas.schema(tp)}

    def content(self, shape: type) -> dict[str, Any]:
        return {JSON: {"schema": self.schemas.ref(shape)}}

    def body(self, shape: type, *, required: bool) -> dict[str, Any]:
        return {"required": required, "content": self.content(shape)}

    def answers(self, shape: type, description: str, status: int, *errors: int) -> dict[str, Any]:
        """The responses of an operation: ``shape`` at ``status``, an ``Error`` at each error."""
        out: dict[str, Any] = {
            str(status): {"description": description, "content": self.content(shape)}
        }
        for code in errors:
            out[str(code)] = {"description": _ERRORS[code], "content": self.content(shapes.Error)}
        return out

    def export(self, shape: type, what: str, operation: str, params: tuple[QueryParam, ...]) -> Any:
        """An export: the list's filters, every matching row streamed as CSV or JSON lines."""
        return {
            "get": {
                "operationId": operation,
                "summary": f"Export {what} matching the list's filters as CSV or JSON lines "
                "(streamed, newest first)",
                "description": f"The list's filters (400 names a bad one) and `format`. "
                f"`{JSON_LINES}`: one `{shape.__name__}` per line. `{CSV}`: a header row of the "
                f"`{shape.__name__}` field names, then one row per item; objects as JSON, null "
                "as an empty cell, and a text cell starting with = + - @ gets a leading ' (no "
                "spreadsheet formulas). Rows newer than the export's start are not included. "
                "A download that fails mid-way ends without the chunked body's terminator.",
                "parameters": self.query(params),
                "responses": {
                    "200": {
                        "description": f"{what}, as an attachment",
                        "headers": {
                            "Content-Disposition": {
                                "description": "attachment; filename=flagpost-<name>-"
                                "<UTC time, e.g. 20261203T061500Z>.csv|.jsonl",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            CSV: {"schema": {"type": "string"}},
                            JSON_LINES: {"schema": self.schemas.ref(shape)},
                        },
                    },
                    **{
                        str(code): {
                            "description": _ERRORS[code],
                            "content": self.content(shapes.Error),
                        }
                        for code in (400, 503)
                    },
                },
            }
        }

    def paths(self) -> dict[str, Any]:
        run_id = self.path_id("run_id", Uuid)
        agent_id = self.path_id("agent_id")
        return {
            "/api/v1/events": {
                "get": {
                    "operationId": "listEvents",
                    "summary": "The History, newest first (keyset pagination)",
                    "parameters": self.query(EVENT_QUERY),
                    "responses": self.answers(shapes.EventPage, "a page of events", 200, 400, 503),
                }
            },
            "/api/v1/events/export": self.export(
                shapes.Event, "the History", "exportEvents", EVENT_EXPORT_QUERY
            ),
            "/api/v1/runs": {
                "get": {
                    "operationId": "listRuns",
                    "summary": "Runs, newest first (keyset pagination)",
                    "parameters": self.query(RUN_QUERY),
                    "responses": self.answers(shapes.RunPage, "a page of runs", 200, 400, 503),
                }
            },
            "/api/v1/runs/export": self.export(shapes.Run, "runs", "exportRuns", RUN_EXPORT_QUERY),
            "/api/v1/runs/{run_id}": {
                "get": {
                    "operationId": "getRun",
                    "summary": "One run: state, progress, ETA, steps",
                    "parameters": [run_id],
                    "responses": self.answers(shapes.RunDetail, "the run", 200, 400, 404, 503),
                }
            },
            "/api/v1/runs/{run_id}/logs": {
                "get": {
                    "operationId": "getRunLogs",
                    "summary": "The run's log lines in seq order, filtered",
                    "parameters": [run_id, *self.query(LOG_QUERY)],
                    "responses": self.answers(shapes.LogPage, "log lines", 200, 400, 404, 503),
                }
            },
            "/api/v1/runs/{run_id}/logs/stats": {
                "get": {
                    "operationId": "getRunLogStats",
                    "summary": "Counts of the run's log lines by level and by source",
                    "parameters": [run_id],
                    "responses": self.answers(shapes.LogStats, "counts", 200, 400, 404, 503),
                }
            },
            "/api/v1/runs/{run_id}/logs/sources": {
                "get": {
                    "operationId": "getRunLogSources",
                    "summary": "The distinct sources of the run's log lines",
                    "parameters": [run_id],
                    "responses": self.answers(shapes.LogSources, "sources", 200, 400, 404, 503),
                }
            },
            "/api/v1/runs/{run_id}/cancel": {
                "post": {
                    "operationId": "cancelRun",
                    "summary": "Ask the agent to cancel the run (stops at the next step "
                    "boundary, rolls back, reports CANCELLED)",
                    "description": _JSON_BODY_NOTE,
                    "parameters": [run_id],
                    "requestBody": {
                        "required": False,
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "responses": self.answers(
                        shapes.ActionAccepted, "cancel queued", 202, 400, 404, 409, 415, 503
                    ),
                }
            },
            "/api/v1/runs/{run_id}/inputs": {
                "get": {
                    "operationId": "getRunInputs",
                    "summary": "What a run waiting for input asks for (fields, errors); never "
                    "an answer",
                    "parameters": [run_id],
                    "responses": self.answers(
                        shapes.RunInputs, "the input request", 200, 400, 404, 503
                    ),
                },
                "post": {
                    "operationId": "answerRunInputs",
                    "summary": "Answer every field of the run's current input request: kept "
                    "encrypted and delivered to the agent as a signed provide_input action with "
                    "its next check-in",
                    "description": "Admin only. 409 when the run is not waiting, the request_id "
                    "is not the current one (stale form) or answers were already sent; 400 names "
                    "a missing, unknown or too long field. Answers are never echoed.",
                    "parameters": [run_id],
                    "requestBody": self.body(shapes.InputAnswers, required=True),
                    "responses": self.answers(
                        shapes.ActionAccepted,
                        "answers queued for the agent",
                        *(202, 400, 404, 409, 415, 503),
                    ),
                },
            },
            "/api/v1/agents": {
                "get": {
                    "operationId": "listAgents",
                    "summary": "Every agent with its health, labels and tags; only those the "
                    "selector picks when `select` is given",
                    "parameters": self.query(SELECT_QUERY),
                    "responses": self.answers(shapes.AgentList, "agents", 200, 400, 503),
                }
            },
            "/api/v1/agents/select/count": {
                "get": {
                    "operationId": "countSelectedAgents",
                    "summary": "How many agents a selector picks, and the first few (the live "
                    "count while a selector is edited)",
                    "description": "400 names the expression and the position: "
                    "`select[1]: expected ')' at 14`.",
                    "parameters": self.query(SELECT_COUNT_QUERY),
                    "responses": self.answers(shapes.SelectCount, "the count", 200, 400, 503),
                }
            },
            "/api/v1/agents/tags": {
                "post": {
                    "operationId": "changeAgentTags",
                    "summary": "Add and remove server-side tags on the agents a selector "
                    "picks, or on listed agent ids",
                    "description": _JSON_BODY_NOTE + " 404 when an agent id is unknown.",
                    "requestBody": self.body(shapes.TagChangeRequest, required=True),
                    "responses": self.answers(
                        shapes.TagChangeResult, "tags changed", 200, 400, 404, 415, 503
                    ),
                }
            },
            "/api/v1/agents/bulk": {
                "post": {
                    "operationId": "bulkAgentAction",
                    "summary": "One action on the agents a selector picks, or on listed agent "
                    "ids: run a spec, cancel their active runs, add or remove tags, revoke",
                    "description": _JSON_BODY_NOTE + " At most 10,000 agents per request (400 "
                    "naming `select` or `agent_ids` beyond). 400 names a bad, missing or "
                    "unknown field, or one the action does not take; 404 when an agent id or "
                    "the spec is unknown. `run_spec` skips revoked agents and agents with 16 "
                    "spec actions waiting; `cancel_runs` skips runs already asked to cancel.",
                    "requestBody": self.body(shapes.BulkActionRequest, required=True),
                    "responses": self.answers(
                        shapes.BulkActionResult, "the action done", 200, 400, 404, 415, 503
                    ),
                }
            },
            "/api/v1/agents/{agent_id}": {
                "get": {
                    "operationId": "getAgent",
                    "summary": "One agent: facts, health, recent runs, pending actions",
                    "parameters": [agent_id],
                    "responses": self.answers(shapes.AgentDetail, "the agent", 200, 400, 404, 503),
                }
            },
            "/api/v1/agents/{agent_id}/runs": {
                "post": {
                    "operationId": "requestRun",
                    "summary": "Ask the agent to run its migration now (delivered with its next "
                    "check-in)",
                    "description": _JSON_BODY_NOTE,
                    "parameters": [agent_id],
                    "requestBody": self.body(shapes.RunRequest, required=False),
                    "responses": self.answers(
                        shapes.ActionAccepted, "run requested", 202, 400, 404, 409, 415, 503
                    ),
                }
            },
            **self.spec_paths(run_id),
            **self.rollout_paths(),
            **self.webhook_paths(),
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "the OpenAPI 3.1 document",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        }

    def spec_paths(self, run_id: dict[str, Any]) -> dict[str, Any]:
        """Migration specs: upload, read, diff, preview, run, revert."""
        spec_id = self.path_id("spec_id", spec_shapes.SpecId)
        revision = self.path_id("revision", spec_shapes.Revision)
        action_id = self.path_id("action_id", Uuid)
        revision_query = [
            {
                "name": name,
                "in": "query",
                "required": True,
                "schema": self.schemas.schema(spec_shapes.Revision),
                "description": text,
            }
            for name, text in (("from", "the older revision"), ("to", "the newer revision"))
        ]
        detail = spec_shapes.SpecDetail
        return {
            "/api/v1/migrations": {
                "get": {
                    "operationId": "listMigrations",
                    "summary": "Every migration spec: latest revision, hosts per version",
                    "responses": self.answers(spec_shapes.SpecList, "specs", 200, 503),
                },
                "post": {
                    "operationId": "addMigration",
                    "summary": "Upload a spec: TOML text (`Content-Type: application/toml`) or a "
                    "JSON object (`application/json`)",
                    "description": "Admin only. Validated like the agent validates it; a 400 "
                    "names every problem with its line and field. The same spec as the latest "
                    "revision (same canonical JSON) answers 200 with that revision.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/toml": {"schema": {"type": "string"}},
                            JSON: {"schema": {"type": "object"}},
                        },
                    },
                    "responses": {
                        **self.answers(
                            spec_shapes.SpecUploaded, "a new revision", 201, 400, 415, 503
                        ),
                        "200": {
                            "description": "unchanged: the latest revision",
                            "content": self.content(spec_shapes.SpecUploaded),
                        },
                    },
                },
            },
            "/api/v1/migrations/{spec_id}": {
                "get": {
                    "operationId": "getMigration",
                    "summary": "A spec's latest revision, its revisions and hosts per version",
                    "parameters": [spec_id],
                    "responses": self.answers(detail, "the spec", 200, 400, 404, 503),
                }
            },
            "/api/v1/migrations/{spec_id}/revisions/{revision}": {
                "get": {
                    "operationId": "getMigrationRevision",
                    "summary": "One revision of a spec",
                    "parameters": [spec_id, revision],
                    "responses": self.answers(detail, "the revision", 200, 400, 404, 503),
                }
            },
            "/api/v1/migrations/{spec_id}/diff": {
                "get": {
                    "operationId": "diffMigrationRevisions",
                    "summary": "Unified diff of two revisions' sources",
                    "parameters": [spec_id, *revision_query],
                    "responses": self.answers(spec_shapes.SpecDiff, "the diff", 200, 400, 404, 503),
                }
            },
            "/api/v1/migrations/{spec_id}/preview": {
                "post": {
                    "operationId": "previewMigration",
                    "summary": "Ask agents to plan the spec and report their diffs (changes "
                    "nothing); one signed preview_migration action per agent",
                    "description": _JSON_BODY_NOTE,
                    "parameters": [spec_id],
                    "requestBody": self.body(spec_shapes.PreviewRequest, required=True),
                    "responses": self.answers(
                        spec_shapes.PreviewsAccepted,
                        "previews requested",
                        *(202, 400, 404, 409, 415, 503),
                    ),
                }
            },
            "/api/v1/migrations/{spec_id}/run": {
                "post": {
                    "operationId": "runMigration",
                    "summary": "Ask an agent to run the spec (a signed run_migration action)",
                    "description": _JSON_BODY_NOTE,
                    "parameters": [spec_id],
                    "requestBody": self.body(spec_shapes.SpecRunRequest, required=True),
                    "responses": self.answers(
                        shapes.ActionAccepted, "run requested", 202, 400, 404, 409, 415, 503
                    ),
                }
            },
            "/api/v1/previews/{action_id}": {
                "get": {
                    "operationId": "getPreview",
                    "summary": "The diffs an agent reported for a preview, or pending",
                    "parameters": [action_id],
                    "responses": self.answers(
                        spec_shapes.Preview, "the preview", 200, 400, 404, 503
                    ),
                }
            },
            "/api/v1/runs/{run_id}/revert": {
                "post": {
                    "operationId": "revertRun",
                    "summary": "Ask the run's agent to put back the files of a succeeded spec "
                    "run (a signed revert_run action)",
                    "description": _JSON_BODY_NOTE,
                    "parameters": [run_id],
                    "requestBody": {
                        "required": False,
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "responses": self.answers(
                        shapes.ActionAccepted, "revert requested", 202, 400, 404, 409, 415, 503
                    ),
                }
            },
        }

    def rollout_paths(self) -> dict[str, Any]:
        """Rollouts: create, list, show, pause, resume, abort."""
        rollout_id = self.path_id("rollout_id", Uuid)
        summary = rollout_shapes.RolloutSummary

        def change(operation: str, text: str) -> dict[str, Any]:
            return {
                "post": {
                    "operationId": operation,
                    "summary": text,
                    "description": _JSON_BODY_NOTE,
                    "parameters": [rollout_id],
                    "requestBody": self.body(rollout_shapes.RolloutChange, required=False),
                    "responses": self.answers(
                        summary, "the rollout after the change", 200, 400, 404, 409, 415, 503
                    ),
                }
            }

        return {
            "/api/v1/rollouts": {
                "get": {
                    "operationId": "listRollouts",
                    "summary": "Rollouts, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        }
                    ],
                    "responses": self.answers(
                        rollout_shapes.RolloutList, "rollouts", 200, 400, 503
                    ),
                },
                "post": {
                    "operationId": "createRollout",
                    "summary": "Start a rollout of a spec revision on the hosts a selector picks, "
                    "in cumulative waves with gates",
                    "description": "Admin only. The selector is evaluated once, now; waves are "
                    "cumulative host counts or percentages ending with 100%. Without a gate any "
                    "failure halts.",
                    "requestBody": self.body(rollout_shapes.RolloutCreate, required=True),
                    "responses": self.answers(
                        summary, "the new rollout (RUNNING)", 201, 400, 404, 415, 503
                    ),
                },
            },
            "/api/v1/rollouts/{rollout_id}": {
                "get": {
                    "operationId": "getRollout",
                    "summary": "One rollout: per wave its hosts by outcome, the transitions, hosts",
                    "parameters": [rollout_id],
                    "responses": self.answers(
                        rollout_shapes.RolloutDetail, "the rollout", 200, 404, 503
                    ),
                }
            },
            "/api/v1/rollouts/{rollout_id}/pause": change(
                "pauseRollout", "Pause a RUNNING rollout: no new host starts"
            ),
            "/api/v1/rollouts/{rollout_id}/resume": change(
                "resumeRollout",
                "Resume a PAUSED rollout, or a HALTED one with a reason (overrides the gate)",
            ),
            "/api/v1/rollouts/{rollout_id}/abort": change(
                "abortRollout",
                "Abort a rollout; with revert, every host it migrated reverts, newest wave first",
            ),
        }

    def webhook_paths(self) -> dict[str, Any]:
        """Webhooks (admin only): list, add, remove, delivery log."""
        webhook_id = self.path_id("webhook_id", Uuid)
        admin = "Admin only."
        return {
            "/api/v1/webhooks": {
                "get": {
                    "operationId": "listWebhooks",
                    "summary": "Webhooks, oldest first (never their secrets)",
                    "description": admin,
                    "responses": self.answers(webhook_shapes.WebhookList, "webhooks", 200, 503),
                },
                "post": {
                    "operationId": "addWebhook",
                    "summary": "Add a webhook: its events are POSTed to the URL, signed "
                    "(Flagpost-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t.body)>)",
                    "description": _JSON_BODY_NOTE + " The secret is generated unless given, "
                    "and returned only in this answer.",
                    "requestBody": self.body(webhook_shapes.WebhookCreate, required=True),
                    "responses": self.answers(
                        webhook_shapes.WebhookCreated,
                        "the new webhook, with its secret",
                        201,
                        400,
                        415,
                        503,
                    ),
                },
            },
            "/api/v1/webhooks/{webhook_id}": {
                "delete": {
                    "operationId": "removeWebhook",
                    "summary": "Remove a webhook and its delivery log",
                    "description": admin + " Needs the CSRF token in `X-CSRF-Token`.",
                    "parameters": [webhook_id],
                    "responses": self.answers(
                        webhook_shapes.WebhookRemoved, "removed", 200, 400, 404, 503
                    ),
                }
            },
            "/api/v1/webhooks/{webhook_id}/deliveries": {
                "get": {
                    "operationId": "listWebhookDeliveries",
                    "summary": "A webhook's delivery log, newest first: state, attempts, last "
                    "status, latency and error, next attempt",
                    "description": admin,
                    "parameters": [
                        webhook_id,
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        },
                    ],
                    "responses": self.answers(
                        webhook_shapes.DeliveryList, "the delivery log", 200, 400, 404, 503
                    ),
                }
            },
        }

    def secured(self, paths: dict[str, Any]) -> dict[str, Any]:
        """Add the session requirement, and its 401/403 answers, to every API operation."""
        for item in paths.values():
            for method, operation in item.items():
                if method == "get":
                    operation.setdefault("security", [{"session": []}])
                    denied = "not allowed"
                else:
                    operation.setdefault("security", [{"session": [], "csrf": []}])
                    denied = "CSRF token missing or wrong, or the admin role is needed"
                responses = operation["responses"]
                for code, text in (("401", "log in first (no session)"), ("403", denied)):
                    responses.setdefault(
                        code, {"description": text, "content": self.content(shapes.Error)}
                    )
        return paths

    def auth_paths(self) -> dict[str, Any]:
        """Web login. Every operation needs a session (cookie); every POST also its CSRF token."""
        see_other = {
            "description": "see Location",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
        csrf_refused = {"description": "CSRF token missing or wrong", "content": _HTML}
        return {
            "/login": {
                "post": {
                    "operationId": "login",
                    "summary": "Log in: open a session (the `flagpost_session` cookie)",
                    "description": "The login form (`GET /login`) sets a `flagpost_login_csrf` "
                    "cookie and carries its token in `csrf_token` (double-submit). Rate limited "
                    "per address and user name. Every refusal has the same message.",
                    "security": [],
                    "requestBody": {
                        "required": True,
                        "content": {_FORM: {"schema": self.schemas.ref(LoginForm)}},
                    },
                    "responses": {
                        "303": {**see_other, "description": "logged in: to `next` (a local path)"},
                        "401": {"description": "wrong user name or password", "content": _HTML},
                        "403": csrf_refused,
                        "429": {
                            "description": "too many attempts; see Retry-After",
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                            "content": _HTML,
                        },
                    },
                }
            },
            "/logout": {
                "post": {
                    "operationId": "logout",
                    "summary": "Log out: the session is deleted on the server",
                    "security": [{"session": [], "csrf": []}],
                    "requestBody": {
                        "required": False,
                        "content": {_FORM: {"schema": self.schemas.ref(LogoutForm)}},
                    },
                    "responses": {
                        "303": {**see_other, "description": "logged out: to /login"},
                        "401": {"description": "no session", "content": _HTML},
                        "403": csrf_refused,
                    },
                }
            },
        }


def openapi_document() -> dict[str, Any]:
    """The document, built afresh (callers may mutate it)."""
    doc = _Document()
    paths = {**doc.secured(doc.paths()), **doc.auth_paths()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Flagpost API",
            "version": SERVER_VERSION,
            "description": "Which hosts migrated their config, which failed and why. JSON over "
            'HTTP; errors are `{"error": reason, "message": text}`. Every operation needs a '
            "session (log in with `POST /login`); every POST also the session's CSRF token, "
            "and the actions (cancel, run now, answer inputs) the admin role.",
        },
        "security": [{"session": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(doc.schemas.components.items())),
            "securitySchemes": {k: dict(v) for k, v in SECURITY_SCHEMES.items()},
        },
    }
