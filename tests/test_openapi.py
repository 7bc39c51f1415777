"""The OpenAPI document describes exactly the app's ``/api/v1`` routes, and is served."""

from __future__ import annotations

from aiohttp import web
from openapi_spec_validator import validate
from server_testlib import logged_in_http

from server.app import RunningServer, create_app
from server.config import load_config
from server.web.api.openapi import openapi_document

METHODS = {"get", "post", "put", "patch", "delete"}
AUTH_POSTS = {"/login", "/logout"}  # the session's own JSON-less endpoints are documented too


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method.lower() not in METHODS:
            continue
        if path.startswith("/api/v1") or (route.method == "POST" and path in AUTH_POSTS):
            routes.add((route.method.lower(), path))
    return routes


def document_routes(document: dict[str, object]) -> set[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


def test_every_api_route_is_documented_and_vice_versa() -> None:
    app = create_app(load_config(env={}, overrides={"database_url": "sqlite+aiosqlite://"}))
    routes = app_routes(app)
    assert ("get", "/api/v1/events") in routes and (
        "post",
        "/api/v1/runs/{run_id}/cancel",
    ) in routes
    assert ("post", "/login") in routes and ("post", "/logout") in routes
    assert routes == document_routes(openapi_document())


def test_every_operation_declares_its_security() -> None:
    document = openapi_document()
    schemes = document["components"]["securitySchemes"]
    assert schemes["session"] == {**schemes["session"], "in": "cookie", "name": "flagpost_session"}
    assert schemes["csrf"]["in"] == "header" and schemes["csrf"]["name"] == "X-CSRF-Token"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path == "/login":
                assert operation["security"] == [] and "429" in operation["responses"]
                continue
            assert "401" in operation["responses"] and "403" in operation["responses"], path
            expected = [{"session": []}] if method == "get" else [{"session": [], "csrf": []}]
            assert operation["security"] == expected, (method, path)


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_document_is_served(running_server: RunningServer) -> None:
    async with (
        logged_in_http(running_server, "viewer", base_url=True) as http,
        http.get("/api/v1/openapi.json") as response,
    ):
        assert response.status == 200
        assert await response.json() == openapi_document()
