"""The OpenAPI 3.1 document of the whole ``/api/v1`` and of ``POST /login`` / ``/logout``
(served at ``/api/v1/openapi.json``).

Hand-written: the API is small, and a test (``tests/test_openapi.py``) checks that every
``/api/v1`` route of the app is described here and that nothing here is missing from the app.
"""

from __future__ import annotations

import copy
from typing import Any

from server import __version__ as SERVER_VERSION

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = _nullable("string", format="date-time")
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_COUNT_MAP = {"type": "object", "additionalProperties": {"type": "integer"}}
_RUN_STATES = [
    "PENDING",
    "RUNNING",
    "AWAITING_INPUT",
    "SUCCEEDED",
    "FAILED",
    "PARTIAL",
    "CANCELLED",
]


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties) if required is None else required,
    }


_RUN_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "agent_id": {"type": "string"},
    "hostname": {"type": "string"},
    "migration_id": {"type": "string"},
    "state": {"type": "string", "enum": _RUN_STATES},
    "terminal": {"type": "boolean"},
    "steps_done": {"type": "integer", "minimum": 0},
    "steps_total": {"type": "integer", "minimum": 0},
    "migration_from": {"type": "string"},
    "migration_to": {"type": "string"},
    "error_message": {"type": "string"},
    "started_at": _TIME_OR_NULL,
    "finished_at": _TIME_OR_NULL,
    "duration_seconds": _nullable("number"),
    "created_at": _TIME,
    "updated_at": _TIME,
    "requested_by": _nullable("string", description="who asked for the run from the web/API"),
    "requested_action_id": _nullable("string"),
    "cancel_requested_by": _nullable("string"),
    "cancel_requested_at": _TIME_OR_NULL,
    "cancelled_by": _nullable("string"),
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "error": {
                "type": "string",
                "description": "machine-readable reason, e.g. invalid_argument, not_found",
            },
            "message": {
                "type": "string",
                "description": "human-readable; names the offending parameter (`limit: ...`)",
            },
        }
    ),
    "Event": _obj(
        {
            "id": {"type": "integer", "description": "monotonic; the keyset cursor"},
            "event_id": {"type": "string", "format": "uuid"},
            "agent_id": {"type": "string"},
            "hostname": {"type": "string"},
            "category": {"type": "string", "enum": ["migration", "agent"]},
            "event_type": {"type": "string"},
            "status": {"type": "string"},
            "outcome": {"type": "string", "examples": ["migration_execution_failed"]},
            "severity": {"type": "string", "enum": ["error", "warning", "success", "info"]},
            "message": {"type": "string"},
            "error_message": {"type": "string"},
            "error_detail": {"type": "object"},
            "migration_from": {"type": "string"},
            "migration_to": {"type": "string"},
            "run_id": _nullable("string"),
            "system_info": _STR_MAP,
            "occurred_at": _TIME,
            "received_at": _TIME,
        }
    ),
    "EventPage": _obj(
        {
            "events": {"type": "array", "items": _ref("Event")},
            "next_before": _nullable("integer", description="cursor of the next (older) page"),
        }
    ),
    "Run": _obj(_RUN_PROPERTIES),
    "Step": _obj(
        {
            "index": {"type": "integer"},
            "name": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "running", "succeeded", "failed", "rolled_back", "skipped"],
            },
            "error": {"type": "string"},
            "duration_ms": {"type": "integer"},
        }
    ),
    "RunDetail": {
        "allOf": [
            _ref("Run"),
            _obj(
                {
                    "steps": {"type": "array", "items": _ref("Step")},
                    "progress": {"type": "number", "minimum": 0, "maximum": 1},
                    "eta_seconds": _nullable("number"),
                    "eta_basis": _nullable("string", enum=["this_run", "past_runs", None]),
                    "log_lines": {"type": "integer"},
                    "cancel_pending": {"type": "boolean"},
                }
            ),
        ]
    },
    "RunPage": _obj(
        {
            "runs": {"type": "array", "items": _ref("Run")},
            "next_before": _nullable("string", description="opaque cursor of the next page"),
        }
    ),
    "LogLine": _obj(
        {
            "seq": {"type": "integer", "minimum": 1},
            "timestamp": _TIME,
            "level": {"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
            "source": {"type": "string"},
            "message": {"type": "string"},
            "metadata": _STR_MAP,
        }
    ),
    "LogPage": _obj(
        {
            "lines": {"type": "array", "items": _ref("LogLine")},
            "next_after_seq": _nullable(
                "integer", description="pass as after_seq for the next page; null: none now"
            ),
        }
    ),
    "LogStats": _obj(
        {"total": {"type": "integer"}, "by_level": _COUNT_MAP, "by_source": _COUNT_MAP}
    ),
    "LogSources": _obj({"sources": {"type": "array", "items": {"type": "string"}}}),
    "Action": _obj(
        {
            "action_id": {"type": "string", "format": "uuid"},
            "agent_id": {"type": "string"},
            "kind": {"type": "string", "enum": ["run_migration", "cancel_run", "provide_input"]},
            "params": _STR_MAP,
            "created_at": _TIME,
            "expires_at": _TIME,
            "delivered_at": _TIME_OR_NULL,
            "acknowledged_at": _TIME_OR_NULL,
            "requested_by": {"type": "string"},
        }
    ),
    "ActionAccepted": _obj({"action": _ref("Action")}),
    "RunRequest": _obj(
        {"migration_id": {"type": "string", "maxLength": 128}},
        required=[],
    ),
    "Agent": _obj(
        {
            "id": {"type": "string"},
            "hostname": {"type": "string"},
            "os": {"type": "string"},
            "agent_version": {"type": "string"},
            "config_version": {"type": "string"},
            "enrolled_at": _TIME,
            "last_checkin_at": _TIME_OR_NULL,
            "revoked": {"type": "boolean"},
            "health": {"type": "string", "enum": ["online", "stale", "offline", "never"]},
        }
    ),
    "AgentList": _obj({"agents": {"type": "array", "items": _ref("Agent")}}),
    "AgentDetail": {
        "allOf": [
            _ref("Agent"),
            _obj(
                {
                    "kernel": {"type": "string"},
                    "disk_free_bytes": {"type": "integer"},
                    "machine_id": {"type": "string"},
                    "checkin_interval_seconds": {"type": "integer"},
                    "runs": {"type": "array", "items": _ref("Run"), "maxItems": 20},
                    "pending_actions": {"type": "array", "items": _ref("Action")},
                }
            ),
        ]
    },
}


def _param(
    name: str,
    where: str = "query",
    schema: dict[str, Any] | None = None,
    description: str = "",
    repeat: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema or {"type": "string"},
    }
    if repeat:
        body["schema"] = {"type": "array", "items": body["schema"]}
        body["style"] = "form"
        body["explode"] = True
    if description:
        body["description"] = description
    return body


def _response(schema: str, description: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": _ref(schema)}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    names = {
        400: "invalid parameter (the message names it)",
        404: "not found",
        409: "conflict (e.g. the run already ended, the agent is revoked)",
        415: "Content-Type is not application/json",
        503: "the database is unavailable; retry",
    }
    return {
        str(code): {"description": names[code], "content": {JSON: {"schema": _ref("Error")}}}
        for code in statuses
    }


_RUN_ID = _param("run_id", "path", {"type": "string", "format": "uuid"})
_AGENT_ID = _param("agent_id", "path")
_JSON_BODY_NOTE = (
    "Requires `Content-Type: application/json` so a cross-site form cannot trigger it, a "
    "session of an admin, and its CSRF token in `X-CSRF-Token`."
)

PATHS: dict[str, Any] = {
    "/api/v1/events": {
        "get": {
            "operationId": "listEvents",
            "summary": "The History, newest first (keyset pagination)",
            "parameters": [
                _param("migration_only", schema={"type": "boolean"}),
                _param(
                    "severity",
                    schema={"type": "string", "enum": ["error", "warning", "success", "info"]},
                    repeat=True,
                ),
                _param("event_type", repeat=True, description="e.g. migration_execution_failed"),
                _param("agent", description="agent id"),
                _param("since", schema={"type": "string", "format": "date-time"}),
                _param("until", schema={"type": "string", "format": "date-time"}),
                _param("q", description="free text"),
                _param("before", schema={"type": "integer"}, description="cursor (event id)"),
                _param("limit", schema={"type": "integer", "minimum": 1}),
            ],
            "responses": {**_response("EventPage", "a page of events"), **_errors(400, 503)},
        }
    },
    "/api/v1/runs": {
        "get": {
            "operationId": "listRuns",
            "summary": "Runs, newest first (keyset pagination)",
            "parameters": [
                _param("state", schema={"type": "string", "enum": _RUN_STATES}, repeat=True),
                _param("agent", description="agent id"),
                _param("before", description="cursor: next_before of the previous page"),
                _param("limit", schema={"type": "integer", "minimum": 1, "maximum": 500}),
            ],
            "responses": {**_response("RunPage", "a page of runs"), **_errors(400, 503)},
        }
    },
    "/api/v1/runs/{run_id}": {
        "get": {
            "operationId": "getRun",
            "summary": "One run: state, progress, ETA, steps",
            "parameters": [_RUN_ID],
            "responses": {**_response("RunDetail", "the run"), **_errors(400, 404, 503)},
        }
    },
    "/api/v1/runs/{run_id}/logs": {
        "get": {
            "operationId": "getRunLogs",
            "summary": "The run's log lines in seq order, filtered",
            "parameters": [
                _RUN_ID,
                _param(
                    "level",
                    schema={"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                    repeat=True,
                ),
                _param("source", repeat=True),
                _param("q", description="case-insensitive text in the message"),
                _param("after_seq", schema={"type": "integer", "minimum": 0}),
                _param("limit", schema={"type": "integer", "minimum": 1, "maximum": 5000}),
            ],
            "responses": {**_response("LogPage", "log lines"), **_errors(400, 404, 503)},
        }
    },
    "/api/v1/runs/{run_id}/logs/stats": {
        "get": {
            "operationId": "getRunLogStats",
            "summary": "Counts of the run's log lines by level and by source",
            "parameters": [_RUN_ID],
            "responses": {**_response("LogStats", "counts"), **_errors(400, 404, 503)},
        }
    },
    "/api/v1/runs/{run_id}/logs/sources": {
        "get": {
            "operationId": "getRunLogSources",
            "summary": "The distinct sources of the run's log lines",
            "parameters": [_RUN_ID],
            "responses": {**_response("LogSources", "sources"), **_errors(400, 404, 503)},
        }
    },
    "/api/v1/runs/{run_id}/cancel": {
        "post": {
            "operationId": "cancelRun",
            "summary": "Ask the agent to cancel the run (stops at the next step boundary, rolls "
            "back, reports CANCELLED)",
            "description": _JSON_BODY_NOTE,
            "parameters": [_RUN_ID],
            "requestBody": {
                "required": False,
                "content": {JSON: {"schema": {"type": "object"}}},
            },
            "responses": {
                **_response("ActionAccepted", "cancel queued", "202"),
                **_errors(400, 404, 409, 415, 503),
            },
        }
    },
    "/api/v1/agents": {
        "get": {
            "operationId": "listAgents",
            "summary": "Every agent with its health",
            "responses": {**_response("AgentList", "agents"), **_errors(503)},
        }
    },
    "/api/v1/agents/{agent_id}": {
        "get": {
            "operationId": "getAgent",
            "summary": "One agent: facts, health, recent runs, pending actions",
            "parameters": [_AGENT_ID],
            "responses": {**_response("AgentDetail", "the agent"), **_errors(400, 404, 503)},
        }
    },
    "/api/v1/agents/{agent_id}/runs": {
        "post": {
            "operationId": "requestRun",
            "summary": "Ask the agent to run its migration now (delivered with its next check-in)",
            "description": _JSON_BODY_NOTE,
            "parameters": [_AGENT_ID],
            "requestBody": {
                "required": False,
                "content": {JSON: {"schema": _ref("RunRequest")}},
            },
            "responses": {
                **_response("ActionAccepted", "run requested", "202"),
                **_errors(400, 404, 409, 415, 503),
            },
        }
    },
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


# Input requests: a run waiting for input (AWAITING_INPUT) and its answers.
SCHEMAS["InputField"] = _obj(
    {
        "name": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
        "label": {"type": "string", "maxLength": 200},
        "secret": {"type": "boolean", "description": "answer in a password field"},
        "error": {"type": "string", "description": "why the previous answer was refused"},
    }
)
SCHEMAS["RunInputs"] = _obj(
    {
        "run_id": {"type": "string", "format": "uuid"},
        "state": {"type": "string", "enum": _RUN_STATES},
        "waiting": {"type": "boolean", "description": "AWAITING_INPUT now"},
        "request_id": _nullable("string", description="answer this request (null: never asked)"),
        "fields": {"type": "array", "items": _ref("InputField"), "maxItems": 16},
        "requested_at": _TIME_OR_NULL,
        "answers_sent": {
            "type": "boolean",
            "description": "answers to the current request are on their way to the agent",
        },
        "answered_by": _nullable("string"),
        "answered_at": _TIME_OR_NULL,
    }
)
SCHEMAS["InputAnswers"] = _obj(
    {
        "request_id": {"type": "string", "format": "uuid"},
        "inputs": {
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1},
            "description": "one value per field asked (each at most input_max_bytes bytes)",
        },
    }
)
PATHS["/api/v1/runs/{run_id}/inputs"] = {
    "get": {
        "operationId": "getRunInputs",
        "summary": "What a run waiting for input asks for (fields, errors); never an answer",
        "parameters": [_RUN_ID],
        "responses": {**_response("RunInputs", "the input request"), **_errors(400, 404, 503)},
    },
    "post": {
        "operationId": "answerRunInputs",
        "summary": "Answer every field of the run's current input request: kept encrypted "
        "and delivered to the agent as a signed provide_input action with its next check-in",
        "description": "Admin only. 409 when the run is not waiting, the request_id is not "
        "the current one (stale form) or answers were already sent; 400 names a missing, "
        "unknown or too long field. Answers are never echoed.",
        "parameters": [_RUN_ID],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("InputAnswers")}}},
        "responses": {
            **_response("ActionAccepted", "answers queued for the agent", "202"),
            **_errors(400, 404, 409, 415, 503),
        },
    },
}


# Web login. Every operation needs a session (cookie); every POST also its CSRF token.
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
_FORM = "application/x-www-form-urlencoded"
_HTML = {"text/html": {"schema": {"type": "string"}}}
_SEE_OTHER = {
    "description": "see Location",
    "headers": {"Location": {"schema": {"type": "string"}}},
}
AUTH_PATHS: dict[str, Any] = {
    "/login": {
        "post": {
            "operationId": "login",
            "summary": "Log in: open a session (the `flagpost_session` cookie)",
            "description": "The login form (`GET /login`) sets a `flagpost_login_csrf` cookie "
            "and carries its token in `csrf_token` (double-submit). Rate limited per address "
            "and user name. Every refusal has the same message.",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    _FORM: {
                        "schema": _obj(
                            {
                                "name": {"type": "string", "maxLength": 64},
                                "password": {"type": "string", "maxLength": 1024},
                                "csrf_token": {"type": "string"},
                                "next": {"type": "string", "description": "a local path"},
                            },
                            required=["name", "password", "csrf_token"],
                        )
                    }
                },
            },
            "responses": {
                "303": {**_SEE_OTHER, "description": "logged in: to `next` (a local path)"},
                "401": {"description": "wrong user name or password", "content": _HTML},
                "403": {"description": "CSRF token missing or wrong", "content": _HTML},
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
                "content": {_FORM: {"schema": _obj({"csrf_token": {"type": "string"}}, [])}},
            },
            "responses": {
                "303": {**_SEE_OTHER, "description": "logged out: to /login"},
                "401": {"description": "no session", "content": _HTML},
                "403": {"description": "CSRF token missing or wrong", "content": _HTML},
            },
        }
    },
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
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
            for code, description in (("401", "log in first (no session)"), ("403", denied)):
                responses.setdefault(
                    code,
                    {"description": description, "content": {JSON: {"schema": _ref("Error")}}},
                )
    return paths


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not mutate the module's constants)."""
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
        "paths": {**_secured(copy.deepcopy(PATHS)), **copy.deepcopy(AUTH_PATHS)},
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": copy.deepcopy(SECURITY_SCHEMES),
        },
    }
