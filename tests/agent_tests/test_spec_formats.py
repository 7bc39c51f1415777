"""The formats of agent/specs/formats: edits keep comments and untouched lines, conversions keep
values and types, parse errors name lines, and the TOML/YAML libraries load only when used."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.specs import formats
from agent.specs.errors import FormatError

INI = "# top comment\n[server]\n; where\naddr = 0.0.0.0\nport=8080\n\n[db]\nurl = x\n"


def test_ini_edits_keep_comments_blank_lines_and_order() -> None:
    doc = formats.parse("ini", INI)
    doc.rename("server.addr", "server.address")
    doc.set("server.port", 9090)
    doc.set("server.tls", True)
    doc.set("meta.schema", "2")
    doc.delete("db.url")
    assert doc.dump() == (
        "# top comment\n[server]\n; where\naddress = 0.0.0.0\nport=9090\ntls = true\n\n[db]\n"
        "\n[meta]\nschema = 2\n"
    )
    assert doc.dotted_keys() == ["server.address", "server.port", "server.tls", "meta.schema"]
    assert [c.text for c in doc.comments()] == ["# top comment", "; where"]


def test_kv_and_env_edits_keep_comments() -> None:
    kv = formats.parse("kv", "# legacy\nserver_url = https://x\n\n# token\nagent_token = t\n")
    kv.rename("server_url", "server.url")
    kv.set("log_level", "info")
    assert (
        kv.dump()
        == "# legacy\nserver.url = https://x\n\n# token\nagent_token = t\nlog_level = info\n"
    )
    env = formats.parse("env", "# env\nexport A=1\nB=\"two words\" # why\nC='$lit'\n")
    assert env.data() == {"A": "1", "B": "two words", "C": "$lit"}
    env.set("B", 'say "hi" $HOME')
    env.set("D", "plain")
    env.rename("A", "AA")
    assert env.dump() == '# env\nexport AA=1\nB="say \\"hi\\" \\$HOME" # why\nC=\'$lit\'\nD=plain\n'
    assert formats.parse("env", env.dump()).get("B") == 'say "hi" $HOME'


def test_toml_and_yaml_edits_keep_comments_and_order() -> None:
    toml = formats.parse("toml", '# head\n[server]\n# addr\naddr = "x"  # inline\nport = 80\n')
    toml.rename("server.addr", "server.address")
    toml.set("server.port", 81)
    toml.set("db.password", "p")
    assert toml.dump() == (
        '# head\n[server]\n# addr\naddress = "x"  # inline\nport = 81\n\n[db]\npassword = "p"\n'
    )
    yaml = formats.parse("yaml", "# head\nserver:\n  # addr\n  addr: x\n  port: 80  # p\n")
    yaml.rename("server.addr", "server.address")
    yaml.set("server.port", 81)
    yaml.delete("server.address")
    yaml.set("server.tls", True)
    assert yaml.dump() == "# head\nserver:\n  # addr\n  port: 81  # p\n  tls: true\n"


def test_json_keeps_key_order_and_types() -> None:
    doc = formats.parse("json", '{"b": 1, "a": {"x": 1.5, "y": [true, null]}}')
    doc.set("a.z", "s")
    doc.rename("b", "c")
    assert doc.dump() == (
        '{\n  "c": 1,\n  "a": {\n    "x": 1.5,\n    "y": [\n      true,\n      null\n    ],\n'
        '    "z": "s"\n  }\n}\n'
    )


def test_text_has_no_keys() -> None:
    doc = formats.parse("text", "hello\n")
    with pytest.raises(FormatError, match="a text file has no keys"):
        doc.set("a", "b")
    assert doc.dump() == "hello\n"


@pytest.mark.parametrize(
    ("format_name", "text", "line", "message"),
    [
        ("ini", "[a]\nx = 1\nnot an entry\n", 3, "expected '[section]' or 'key = value'"),
        ("ini", "[a]\nx = 1\nx = 2\n", 3, "key 'x' in [a] appears twice (also line 2)"),
        ("ini", "[a]\n[a]\n", 2, "section [a] appears twice"),
        ("kv", "a = 1\n[s]\n", 2, "expected 'key = value'"),
        ("env", 'A=1\nB="open\n', 2, "unterminated double-quoted value"),
        ("json", '{"a": 1,\n}', 2, "Expecting property name enclosed in double quotes"),
        ("json", '{"a": 1, "a": 2}', 0, "key 'a' appears twice in one object"),
        ("toml", "a = 1\nb = \n", 2, "Unexpected character: '\\n'"),
        ("yaml", "a: 1\n b: 2\n", 2, "not valid YAML: mapping values are not allowed here"),
    ],
)
def test_parse_errors_name_their_line(format_name: str, text: str, line: int, message: str) -> None:
    with pytest.raises(FormatError) as caught:
        formats.parse(format_name, text)
    assert (caught.value.line, caught.value.message) == (line, message)


def test_importing_specs_does_not_load_tomlkit_or_ruamel() -> None:
    code = (
        "import sys, agent.specs, agent.specs.plan, agent.specs.formats, agent.specs.validate\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('tomlkit', 'ruamel')]\n"
        "print(loaded)\n"
        "agent.specs.formats.parse('toml', 'a = 1')\n"
        "print('tomlkit' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


# ---------------------------------------------------------------- round trips

KEYS = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
)
LISTS = st.one_of(
    st.lists(st.integers(-1000, 1000), max_size=4),
    st.lists(st.text("abc xyz", max_size=5), max_size=4),
)
TREES = st.recursive(
    st.dictionaries(KEYS, st.one_of(SCALARS, LISTS), max_size=5),
    lambda children: st.dictionaries(KEYS, st.one_of(SCALARS, LISTS, children), max_size=4),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types, all the way down (1, 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def toml_order(data: dict[str, Any]) -> dict[str, Any]:
    """TOML writes a table's plain keys before its sub-tables."""
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)}
    plain.update({k: toml_order(v) for k, v in data.items() if isinstance(v, dict)})
    return plain


@settings(max_examples=60, deadline=None)
@given(TREES)
def test_json_toml_yaml_round_trips_keep_values_and_types(data: dict[str, Any]) -> None:
    expected = toml_order(data)
    current = data
    for format_name in ("json", "toml", "yaml", "json", "yaml", "toml"):
        text = formats.from_data(format_name, current).dump()
        current = formats.parse(format_name, text).data()
        wanted = expected if format_name == "toml" else current
        assert same(current, wanted), (format_name, text)
        if format_name != "toml":
            assert same(toml_order(current), expected), (format_name, text)


LINE_TEXT = st.text("abcdefxyz0123 ._-", min_size=1, max_size=12).map(str.strip).filter(bool)


@st.composite
def line_files(draw: st.DrawFn, sections: bool) -> tuple[str, list[str]]:
    """A file of comments, blank lines and unique entries; returns (text, dotted keys)."""
    lines: list[str] = []
    keys: list[str] = []
    names = draw(st.lists(st.sampled_from(["s1", "s2", "s3"]), unique=True, max_size=3))
    for section in names if sections else [""]:
        if section:
            lines.append(f"[{section}]")
        for index in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["comment", "blank", "entry", "entry"]))
            if kind == "comment":
                lines.append("# " + draw(LINE_TEXT))
            elif kind == "blank":
                lines.append("")
            else:
                key = f"k{index}"
                lines.append(
                    f"{key}{draw(st.sampled_from([' = ', '=', '  =  ']))}{draw(LINE_TEXT)}"
                )
                keys.append(f"{section}.{key}" if section else key)
    return "".join(line + "\n" for line in lines), keys


@pytest.mark.parametrize("format_name", ["ini", "kv"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ini_and_kv_edits_keep_untouched_lines_byte_identical(
    format_name: str, data: st.DataObject
) -> None:
    text, keys = data.draw(line_files(sections=format_name == "ini"))
    if not keys:
        return
    key = data.draw(st.sampled_from(keys))
    before = text.splitlines(keepends=True)
    for edit in ("set", "delete", "rename"):
        doc = formats.parse(format_name, text)
        index = next(
            i
            for i, line in enumerate(before)
            if line.startswith(key.rsplit(".", 1)[-1]) and _in_section(before, i, key)
        )
        if edit == "set":
            doc.set(key, "new value")
            changed = re.sub(r"(=\s*).*", r"\g<1>new value", before[index].rstrip("\n")) + "\n"
            expected = [*before[:index], changed, *before[index + 1 :]]
        elif edit == "delete":
            doc.delete(key)
            expected = [*before[:index], *before[index + 1 :]]
        else:
            doc.rename(key, key + "x")
            expected = [
                *before[:index],
                before[index].replace(key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1] + "x", 1),
                *before[index + 1 :],
            ]
        assert doc.dump().splitlines(keepends=True) == expected, edit


def _in_section(lines: list[str], index: int, key: str) -> bool:
    if "." not in key:
        return True
    section = key.rsplit(".", 1)[0]
    for line in reversed(lines[:index]):
        if line.startswith("["):
            return line.strip() == f"[{section}]"
    return False


ENV_VALUES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=15)


@settings(max_examples=80, deadline=None)
@given(values=st.lists(ENV_VALUES, min_size=1, max_size=5), new=ENV_VALUES, data=st.data())
def test_env_edits_keep_untouched_lines_and_round_trip_values(
    values: list[str], new: str, data: st.DataObject
) -> None:
    doc = formats.from_data("env", {f"K{i}": value for i, value in enumerate(values)})
    text = "# header\n" + doc.dump()
    parsed = formats.parse("env", text)
    assert parsed.data() == {f"K{i}": value for i, value in enumerate(values)}
    index = data.draw(st.integers(0, len(values) - 1))
    parsed.set(f"K{index}", new)
    after = parsed.dump().splitlines(keepends=True)
    before = text.splitlines(keepends=True)
    assert [line for i, line in enumerate(after) if i != index + 1] == [
        line for i, line in enumerate(before) if i != index + 1
    ]
    assert formats.parse("env", parsed.dump()).get(f"K{index}") == new
