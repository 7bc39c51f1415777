"""A page's query with a bad value: parse it again without the refused parameter.

A page with a GET filter form (``/history``, ``/runs``, ``/runs/{id}``, ``/migrations/{id}``)
answers a bad value with itself (400): the other parameters applied, the error next to the
refused field (``web/templates/_field_error.html``) and the value as it was sent kept in its
input. :func:`parse_dropping_refused` gives the query those pages render and a
:class:`RefusedParam` describing the first refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from multidict import MultiDict, MultiMapping

from server.errors import InvalidArgument

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RefusedParam:
    """The query parameter a page refused: its name (``agent[0]`` names ``agent``), why
    (``InvalidArgument.detail``), and its first value as it was sent."""

    field: str
    detail: str
    typed: str


def param_name(error: InvalidArgument) -> str:
    """The query parameter ``error`` names: ``select[2]`` is parameter ``select``."""
    return (error.field or "").split("[")[0]


def parse_dropping_refused(
    query: MultiMapping[str], parse: Callable[[MultiMapping[str]], T]
) -> tuple[T, RefusedParam | None]:
    """``parse(query)`` and None; when it raises InvalidArgument, the parameter the error names
    is dropped (every value of it) and ``parse`` runs again, one parameter after the other (at
    most once per parameter), giving the result and the first refusal.

    An error naming no parameter of the query (a value checked against something else) cannot
    be dropped: the first error is raised then, for the error page.
    """
    params: MultiDict[str] = MultiDict(query)
    first: InvalidArgument | None = None
    for _ in range(len(set(query.keys())) + 1):
        try:
            parsed = parse(params)
        except InvalidArgument as exc:
            first = first or exc
            name = param_name(exc)
            if not name or name not in params:
                raise first from None
            params = MultiDict((k, v) for k, v in params.items() if k != name)
            continue
        if first is None:
            return parsed, None
        name = param_name(first)
        return parsed, RefusedParam(name, first.detail, query.get(name, ""))
    raise AssertionError("unreachable: each failed parse drops one of the query's parameters")


def refused_status(response: web.Response, refused: RefusedParam | None) -> web.Response:
    """``response``, its status 400 when the page refused a parameter."""
    if refused is not None:
        response.set_status(400)
    return response
