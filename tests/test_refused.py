"""``server.web.refused.parse_dropping_refused``: a query with bad values parsed again without
them, one after the other, the first refusal reported (the pages then show it next to its
field: ``tests/test_pages_truth.py``, ``tests/test_migrations_pages.py``)."""

from __future__ import annotations

import pytest
from multidict import MultiDict, MultiMapping

from server.errors import InvalidArgument
from server.web.refused import RefusedParam, parse_dropping_refused
from server.web.request import parse_select


def numbers(query: MultiMapping[str]) -> dict[str, int]:
    """Every parameter must be a number."""
    out: dict[str, int] = {}
    for name, value in query.items():
        if not value.isdigit():
            raise InvalidArgument("must be a number", field=name)
        out[name] = int(value)
    return out


def test_a_good_query_is_parsed_once_with_no_refusal() -> None:
    calls: list[MultiMapping[str]] = []

    def parse(query: MultiMapping[str]) -> dict[str, int]:
        calls.append(query)
        return numbers(query)

    assert parse_dropping_refused(MultiDict(a="1", b="2"), parse) == ({"a": 1, "b": 2}, None)
    assert len(calls) == 1


def test_bad_parameters_are_dropped_one_after_the_other_and_the_first_reported() -> None:
    query = MultiDict([("a", "x"), ("b", "2"), ("c", "y"), ("a", "3")])
    calls = 0

    def parse(params: MultiMapping[str]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return numbers(params)

    parsed, refused = parse_dropping_refused(query, parse)
    assert parsed == {"b": 2}  # every value of a refused parameter goes
    assert refused == RefusedParam("a", "must be a number", "x")  # its first value, as sent
    assert calls == 3  # bounded: at most one more parse than the query has parameters


def test_an_indexed_field_names_its_parameter() -> None:
    query = MultiDict([("select", "env=prod"), ("select", "a\x00b")])
    parsed, refused = parse_dropping_refused(query, parse_select)
    assert parsed == []
    assert refused is not None and refused.field == "select"  # from "select[1]"
    assert refused.detail == "must not contain NUL characters" and refused.typed == "env=prod"


def test_an_error_naming_no_parameter_of_the_query_is_raised() -> None:
    def parse(query: MultiMapping[str]) -> None:
        raise InvalidArgument("is missing", field="body")

    with pytest.raises(InvalidArgument, match="body: is missing"):
        parse_dropping_refused(MultiDict(a="1"), parse)

    def later(query: MultiMapping[str]) -> None:
        if "a" in query:
            raise InvalidArgument("must be a number", field="a")
        raise InvalidArgument("is missing", field="b")

    with pytest.raises(InvalidArgument, match="a: must be a number"):  # the first error
        parse_dropping_refused(MultiDict(a="x"), later)
