"""``server.web.schema``: the JSON Schema the OpenAPI document is built from."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import pytest

from server.domain import RunState
from server.web.schema import Doc, SchemaBuilder, Time


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Leaf(TypedDict):
    """A leaf."""

    name: Annotated[str, Doc(maxLength=8)]
    when: Time | None
    colour: Colour | None
    hint: NotRequired[str]


class Tree(TypedDict):
    leaves: list[Leaf]
    best: Leaf | None
    tags: dict[str, int]
    extra: dict[str, Any]
    kind: Literal["oak", "elm"]
    state: RunState
    ratio: float
    ok: bool


def test_shapes_become_components_with_refs() -> None:
    builder = SchemaBuilder()
    assert builder.schema(Tree) == {"$ref": "#/components/schemas/Tree"}
    tree, leaf = builder.components["Tree"], builder.components["Leaf"]
    assert tree["properties"] == {
        "leaves": {"type": "array", "items": {"$ref": "#/components/schemas/Leaf"}},
        "best": {"anyOf": [{"$ref": "#/components/schemas/Leaf"}, {"type": "null"}]},
        "tags": {"type": "object", "additionalProperties": {"type": "integer"}},
        "extra": {"type": "object"},
        "kind": {"type": "string", "enum": ["oak", "elm"]},
        "state": {"type": "string", "enum": [s.value for s in RunState]},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
    }
    assert tree["required"] == sorted(tree["properties"]) and "description" not in tree
    assert leaf["description"] == "A leaf."
    assert leaf["required"] == ["colour", "name", "when"]  # NotRequired keys are optional
    assert leaf["properties"]["name"] == {"type": "string", "maxLength": 8}
    assert leaf["properties"]["when"] == {"type": ["string", "null"], "format": "date-time"}
    assert leaf["properties"]["colour"] == {
        "type": ["string", "null"],
        "enum": ["red", "blue", None],
    }


@pytest.mark.parametrize("tp", [int | str, dict[int, str], tuple[int, str], Literal[1, "a"], bytes])
def test_types_without_a_json_schema_are_refused(tp: Any) -> None:
    with pytest.raises(TypeError):
        SchemaBuilder().schema(tp)


def test_two_shapes_with_one_name_are_refused() -> None:
    class Leaf(TypedDict):  # another class of the same name as the module's Leaf
        other: int

    builder = SchemaBuilder()
    builder.schema(Tree)
    with pytest.raises(TypeError, match="two shapes are named Leaf"):
        builder.schema(Leaf)
