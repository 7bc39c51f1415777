"""JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) from Python type hints.

The JSON API's bodies are ``TypedDict`` classes (``server.web.api.shapes``) and its query
parameters are typed declarations (``server.web.request``); :class:`SchemaBuilder` turns those
types into the schemas of the OpenAPI document (``server.web.api.openapi``), so a shape or an
enum is written once. Supported: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
``T | None``, ``list[T]``, ``dict[str, T]``, ``Literal[...]``, ``StrEnum`` subclasses (their
values), ``TypedDict`` classes (a ``$ref`` to a component named after the class; keys not marked
``NotRequired`` are required) and ``Annotated[T, Doc(...)]`` (extra keywords such as ``format``,
``minimum`` or ``description``). Anything else raises ``TypeError`` when the document is built.
"""

from __future__ import annotations

import types
from enum import StrEnum
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

COMPONENTS = "#/components/schemas/"

_PRIMITIVES: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
}


class Doc:
    """Extra JSON Schema keywords of an ``Annotated`` type: ``Annotated[str, Doc(format="uuid")]``.
    Nested ``Annotated`` types merge their keywords, the outermost winning."""

    __slots__ = ("keywords",)

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords


Uuid = Annotated[str, Doc(format="uuid")]
Time = Annotated[str, Doc(format="date-time")]  # ISO 8601, always UTC (``+00:00``)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str) and "$ref" not in schema:
        out = {**schema, "type": [kind, "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


class SchemaBuilder:
    """Builds schemas and collects the ``TypedDict`` components they refer to."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._shapes: dict[str, type] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        """The JSON Schema of one value of type ``tp``."""
        origin = get_origin(tp)
        args = get_args(tp)
        if origin is Annotated:
            out = self.schema(args[0])
            for meta in args[1:]:
                if isinstance(meta, Doc):
                    out = {**out, **meta.keywords}
            return out
        if origin in (Required, NotRequired):
            return self.schema(args[0])
        if tp is Any:
            return {}
        if origin in (Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1 or len(rest) == len(args):
                raise TypeError(f"only `T | None` unions have a JSON Schema here, not {tp!r}")
            return _nullable(self.schema(rest[0]))
        if origin is Literal:
            kinds = {_PRIMITIVES[type(v)] for v in args}
            if len(kinds) != 1:
                raise TypeError(f"a Literal of one JSON type, not {tp!r}")
            return {"type": kinds.pop(), "enum": list(args)}
        if origin in (list, tuple) and (origin is list or args[1:] == (...,)):
            return {"type": "array", "items": self.schema(args[0])}
        if origin is dict:
            if args[0] is not str:
                raise TypeError(f"JSON object keys are strings, not in {tp!r}")
            if args[1] is Any:
                return {"type": "object"}
            return {"type": "object", "additionalProperties": self.schema(args[1])}
        if isinstance(tp, type) and issubclass(tp, StrEnum):
            return {"type": "string", "enum": [member.value for member in tp]}
        if is_typeddict(tp):
            return self.ref(tp)
        if tp in _PRIMITIVES:
            return {"type": _PRIMITIVES[tp]}
        raise TypeError(f"no JSON Schema for {tp!r}")

    def ref(self, shape: type) -> dict[str, str]:
        """A ``$ref`` to the component of the ``TypedDict`` ``shape`` (built on first use)."""
        name = shape.__name__
        known = self._shapes.setdefault(name, shape)
        if known is not shape:
            raise TypeError(f"two shapes are named {name}: {known!r} and {shape!r}")
        if name not in self.components:
            self.components[name] = {}  # placeholder: a shape may refer to itself
            self.components[name] = self._object(shape)
        return {"$ref": COMPONENTS + name}

    def _object(self, shape: type) -> dict[str, Any]:
        hints = get_type_hints(shape, include_extras=True)
        # Not ``__required_keys__``: under ``from __future__ import annotations`` Python 3.11
        # cannot see ``NotRequired`` in the string annotations it is given.
        total: bool = getattr(shape, "__total__", True)
        required = [
            key
            for key, tp in hints.items()
            if get_origin(tp) is Required or (total and get_origin(tp) is not NotRequired)
        ]
        out: dict[str, Any] = {
            "type": "object",
            "properties": {key: self.schema(tp) for key, tp in hints.items()},
            "required": sorted(required),
        }
        if shape.__doc__:  # its own docstring (``inspect.getdoc`` would inherit dict's)
            out["description"] = " ".join(shape.__doc__.split())
        return out
