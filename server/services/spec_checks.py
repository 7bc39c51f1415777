"""What the server checks about an uploaded spec beyond the spec language itself: parsing and
validating it with the agent's own validator (``agent.specs.validate``), its size, and that no
secret lands in the database as a literal value.

A spec is data, stored in plain text and shown to every viewer. It may *name* secret keys
(``secret = [...]``, ``move_keys``, a secret ``require_input``), but a literal value for such a
key (``set_key``/``set_default`` of a secret key or of a table holding one, ``when.equals`` or
``enum`` on one) would put the secret in the database, the History and every action body. Such
a spec is refused, naming the field; a secret the host lacks is asked for with
``require_input`` instead.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.specs.errors import SpecError
from agent.specs.locate import field_lines, line_of
from agent.specs.spec import MoveKeys, RequireInput, SetDefault, SetKey, Spec
from agent.specs.validate import parse_spec, parse_spec_json
from server.domain import SpecFormat
from server.errors import InvalidArgument

# The canonical JSON travels in every signed preview/run action inside a check-in response
# (agents accept 4 MiB); 64 KiB keeps a response with many pending actions far below that.
MAX_CANONICAL_BYTES = 64 * 1024
MAX_SOURCE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class CheckedSpec:
    """A valid spec and its canonical form."""

    spec: Spec
    canonical: str  # compact JSON, keys sorted: what agents receive
    sha256: str  # of ``canonical`` (UTF-8)


def _invalid(exc: SpecError) -> InvalidArgument:
    """The validator's own words, every issue on its own line; ``field``: the first issue's."""
    error = InvalidArgument(str(exc) or "is not a valid spec")
    first = exc.issues[0].field if exc.issues else ""
    error.field = first or "source"
    return error


def _data(source: str, fmt: SpecFormat) -> Any:
    if fmt == SpecFormat.TOML:
        return tomllib.loads(source)
    return json.loads(source)


def canonical_json(data: Any) -> str:
    """The canonical text of a spec document: compact JSON, keys sorted, UTF-8 as is."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_spec(source: str, fmt: SpecFormat) -> CheckedSpec:
    """Validate ``source`` (TOML or JSON text) like the agent does, refuse secret literals and
    oversized specs; InvalidArgument naming the line/field as the validator does otherwise."""
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise InvalidArgument(f"is larger than {MAX_SOURCE_BYTES // 1024} KiB", field="source")
    if "\x00" in source:
        raise InvalidArgument("must not contain NUL characters", field="source")
    try:
        spec = parse_spec(source) if fmt == SpecFormat.TOML else parse_spec_json(source)
    except SpecError as exc:
        raise _invalid(exc) from None
    lines = field_lines(source) if fmt == SpecFormat.TOML else {}
    found = list(secret_literals(spec))
    if found:
        issues = []
        for where, key in found:
            line = line_of(where, lines) if lines else 0
            prefix = f"line {line}: " if line else ""
            issues.append(
                f"{prefix}{where}: a literal value for the secret key {key!r} would be stored "
                "on the server; ask for it with require_input instead"
            )
        error = InvalidArgument("\n".join(issues))
        error.field = found[0][0]
        raise error
    try:
        canonical = canonical_json(_data(source, fmt))
    except (TypeError, ValueError) as exc:  # e.g. a TOML date, which JSON cannot hold
        raise InvalidArgument(f"cannot be written as JSON: {exc}", field="source") from None
    size = len(canonical.encode())
    if size > MAX_CANONICAL_BYTES:
        raise InvalidArgument(
            f"is {size} bytes as canonical JSON; at most {MAX_CANONICAL_BYTES} "
            f"({MAX_CANONICAL_BYTES // 1024} KiB) fit in a signed action",
            field="source",
        )
    return CheckedSpec(spec, canonical, hashlib.sha256(canonical.encode()).hexdigest())


def secret_keys(spec: Spec) -> frozenset[str]:
    """Every key the spec declares secret: ``secret``, moved keys, secret inputs' keys."""
    keys = set(spec.secret)
    for step in spec.steps:
        for op in step.ops:
            if isinstance(op, MoveKeys):
                keys.update(op.keys)
            elif isinstance(op, RequireInput) and op.secret:
                keys.add(op.key)
    return frozenset(keys)


def _touches(key: str, value: Any, secrets: frozenset[str]) -> str | None:
    """The secret key a literal ``value`` at ``key`` would hold, or None."""
    for secret in sorted(secrets):
        if key == secret or key.startswith(secret + "."):
            return secret
        if secret.startswith(key + ".") and isinstance(value, dict):
            return secret
    return None


def secret_literals(spec: Spec) -> Iterator[tuple[str, str]]:
    """``(field path, secret key)`` of every literal value given for a secret key."""
    secrets = secret_keys(spec)
    if not secrets:
        return
    for i, version in enumerate(spec.versions):
        when = version.when
        if when is not None and when.equals is not None:
            hit = _touches(when.key, when.equals, secrets)
            if hit is not None:
                yield f"versions[{i}].when.equals", hit
        for key in version.enum:
            hit = _touches(key, None, secrets)
            if hit is not None:
                yield f"versions[{i}].enum", hit
    for s, step in enumerate(spec.steps):
        for o, op in enumerate(step.ops):
            if isinstance(op, SetKey | SetDefault):
                hit = _touches(op.key, op.value, secrets)
                if hit is not None:
                    yield f"steps[{s}].ops[{o}].value", hit
