"""Targets: agent labels (config, facts, ingest), server-side tags, selectors (every parse
error, evaluation in SQL on SQLite and PostgreSQL), with a real agent process reporting its
labels."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from runs_testlib import AgentClient
from sqlalchemy import insert, select

from agent.config import AgentConfigError, load_config
from server import app_keys
from server.app import RunningServer
from server.errors import InvalidArgument, NotFound
from server.selectors import (
    HealthFilter,
    HostTerm,
    IdTerm,
    LabelTerm,
    PresenceTerm,
    SelectorError,
    parse_selector,
    validate_tag,
)
from server.services import agents as agents_service
from server.services import targets
from server.storage.models import Agent

# ---------------------------------------------------------------- parsing


def test_parse_every_form() -> None:
    selector = parse_selector(
        [
            "env=prod",
            "role in (db, cache) !canary",
            "host=web-*,db-?",
            'id=a,b note not in ("x y", z) tier!=gold',
            "canary health=any",
        ]
    )
    assert selector.terms == (
        LabelTerm("env", ("prod",)),
        LabelTerm("role", ("db", "cache")),
        PresenceTerm("canary", negate=True),
        HostTerm(("web-*", "db-?")),
        IdTerm(("a", "b")),
        LabelTerm("note", ("x y", "z"), negate=True),
        LabelTerm("tier", ("gold",), negate=True),
        PresenceTerm("canary"),
    )
    assert selector.health is HealthFilter.ANY
    assert parse_selector([]).health is HealthFilter.ONLINE
    assert parse_selector(['v="a \\" b"']).terms == (LabelTerm("v", ('a " b',)),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("role in (db,cache", "select[1]: expected ')' at 17"),
        ("role in db", "select[1]: expected '(' at 8"),
        ("env=", "select[1]: expected a value at 4"),
        ("  ", "select[1]: empty expression at 2"),
        ("!", "select[1]: expected a tag or label name after '!' at 1"),
        ("=x", "select[1]: expected a label, tag, host=, id= or health= at 0"),
        ("health=up", "select[1]: expected health=online, health=offline or health=any at 0"),
        ("health!=online", "select[1]: expected health=online, health=offline or health=any"),
        ("health", "select[1]: expected '=' after 'health' at 6"),
        ("Env=x", "select[1]: 'Env' is not a label or tag name"),
        ("!Canary", "select[1]: 'Canary' is not a label or tag name"),
        ("env=prod)", "select[1]: unexpected ')' at 8"),
        ("x not (a)", "select[1]: expected 'in' after 'not' at 6"),
        ("host=[ab]", "select[1]: expected a value at 5"),
        ('env="abc', "select[1]: unterminated string at 4"),
        ("x=" + "a" * 40_000, "select[1]: longer than 40000 characters at 0"),
    ],
)
def test_parse_errors_name_expression_and_position(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(["env=prod", text])
    assert str(caught.value).startswith(message)
    assert caught.value.field == "select[1]"


def test_parse_limits_and_tags() -> None:
    with pytest.raises(SelectorError, match="select: at most 32 expressions"):
        parse_selector(["a"] * 33)
    with pytest.raises(SelectorError, match="at most 1000 values"):
        parse_selector(["id=" + ",".join(["x"] * 1001)])
    assert validate_tag("canary") == "canary"
    assert validate_tag("wave=2") == "wave=2"
    for bad in ("", "Canary", "a=", "a=b c", "-x", "x" * 64):
        with pytest.raises(InvalidArgument, match="is not a tag"):
            validate_tag(bad)


# ---------------------------------------------------------------- agent config


def test_agent_labels_from_toml_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('labels = { env = "prod", role = "db" }\n')
    assert load_config(env={}, config_file=toml).labels == (("env", "prod"), ("role", "db"))
    env = {"FLAGPOST_AGENT_LABELS": "env=staging, zone=eu-1"}
    assert load_config(env=env, config_file=toml).labels == (("env", "staging"), ("zone", "eu-1"))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('labels = { Env = "prod" }', "labels.Env: a label key is 1-63"),
        ("labels = { env = 3 }", "labels.env: a label value must be a string"),
        (f'labels = {{ env = "{"x" * 129}" }}', "labels.env: a label value is at most 128"),
        ('labels = { env = "a\\tb" }', "labels.env: a label value is at most 128 printable"),
        ('labels = "env"', "labels: 'env' is not key=value"),
        ("labels = [1]", "labels: expected a table of labels"),
        (
            "labels = { " + ", ".join(f'k{i} = "v"' for i in range(33)) + " }",
            "labels: at most 32 labels, got 33",
        ),
    ],
)
def test_agent_label_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml + "\n")
    with pytest.raises(AgentConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(env={}, config_file=path)


# ---------------------------------------------------------------- evaluation


async def _seed(server: RunningServer) -> dict[str, str]:
    """Six agents: hostname -> id. web-3 offline, db-2 never seen, old-1 revoked."""
    now = datetime.now(UTC)
    fleet = {
        "web-1": ({"env": "prod", "role": "web"}, now, False),
        "web-2": ({"env": "staging", "role": "web"}, now, False),
        "web-3": ({"env": "prod", "role": "web"}, now - timedelta(days=1), False),
        "db-1": ({"env": "prod", "role": "db", "canary": ""}, now, False),
        "db-2": ({"env": "prod", "role": "db"}, None, False),
        "old-1": ({"env": "prod"}, now, True),
    }
    ids = {host: str(uuid.uuid4()) for host in fleet}
    rows = [
        {
            "id": ids[host],
            "hostname": host.upper() if host == "web-2" else host,
            "labels": labels,
            "facts": {},
            "enrolled_at": now,
            "last_checkin_at": seen,
            "revoked": revoked,
        }
        for host, (labels, seen, revoked) in fleet.items()
    ]
    async with server.app[app_keys.SESSIONS]() as session, session.begin():
        await session.execute(insert(Agent), rows)
    return ids


async def _hosts(server: RunningServer, *expressions: str) -> list[str]:
    selection = await targets.select_agents(
        server.app[app_keys.SESSIONS], server.app[app_keys.CONFIG], expressions
    )
    assert selection.count == len(selection.agents)
    return sorted(hostname.lower() for _, hostname in selection.agents)


async def test_selectors_evaluate_in_sql(running_server: RunningServer) -> None:
    server = running_server
    ids = await _seed(server)
    sessions, config = server.app[app_keys.SESSIONS], server.app[app_keys.CONFIG]
    assert await _hosts(server) == ["db-1", "web-1", "web-2"]  # online, not revoked
    assert await _hosts(server, "health=any") == ["db-1", "db-2", "web-1", "web-2", "web-3"]
    assert await _hosts(server, "health=offline") == ["db-2", "web-3"]
    assert await _hosts(server, "env=prod") == ["db-1", "web-1"]
    assert await _hosts(server, "env!=prod") == ["web-2"]
    assert await _hosts(server, "role in (db,cache)", "health=any") == ["db-1", "db-2"]
    assert await _hosts(server, "role not in (db)") == ["web-1", "web-2"]
    assert await _hosts(server, "canary") == ["db-1"]
    assert await _hosts(server, "!canary") == ["web-1", "web-2"]
    assert await _hosts(server, "host=web-*") == ["web-1", "web-2"]  # case-insensitive
    assert await _hosts(server, "host!=web-?") == ["db-1"]
    assert await _hosts(server, "host=w_b-*") == []  # '_' is literal, not LIKE's wildcard
    assert await _hosts(server, f"id={ids['web-1']},{ids['db-1']}") == ["db-1", "web-1"]
    assert await _hosts(server, f"id!={ids['web-1']}", "env=prod") == ["db-1"]
    assert await _hosts(server, "env=prod role=web") == ["web-1"]
    assert await _hosts(server, "nosuch") == []

    # tags: bulk by selector, then by ids; how many changed
    change = await targets.change_tags(
        sessions, config, add=["wave=1", "pilot"], expressions=["host=web-*"]
    )
    assert (change.matched, change.changed) == (2, 2)
    again = await targets.change_tags(sessions, config, add=["pilot"], expressions=["host=web-*"])
    assert (again.matched, again.changed) == (2, 0)
    assert await _hosts(server, "pilot") == ["web-1", "web-2"]
    assert await _hosts(server, "wave") == ["web-1", "web-2"]  # a key=value tag's key
    assert await _hosts(server, "wave=1", "!canary") == ["web-1", "web-2"]
    assert await _hosts(server, "wave in (1,2)") == ["web-1", "web-2"]
    assert await _hosts(server, "!pilot") == ["db-1"]
    removed = await targets.change_tags(
        sessions, config, remove=["pilot"], agent_ids=[ids["web-1"], ids["db-1"]]
    )
    assert (removed.matched, removed.changed) == (2, 1)
    assert await _hosts(server, "pilot") == ["web-2"]
    [web1] = [a for a in await agents_service.list_agents(sessions, config, ["host=web-1"])]
    assert web1.tags == ("wave=1",) and web1.labels == (("env", "prod"), ("role", "web"))
    with pytest.raises(NotFound, match="no agent nope"):
        await targets.change_tags(sessions, config, add=["x"], agent_ids=["nope"])
    with pytest.raises(InvalidArgument, match="add\\[0\\]: 'Bad' is not a tag"):
        await targets.change_tags(sessions, config, add=["Bad"], agent_ids=[ids["web-1"]])
    with pytest.raises(InvalidArgument, match="give either select or agent_ids"):
        await targets.change_tags(sessions, config, add=["x"])
    limited = await targets.select_agents(sessions, config, ["health=any"], limit=2)
    assert limited.count == 5 and len(limited.agents) == 2


# ---------------------------------------------------------------- ingest


async def test_checkin_labels_stored_and_validated(running_server: RunningServer) -> None:
    server = running_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel, "lab-1")
        agent.facts.labels.update({"env": "prod", "role": "db"})
        await agent.checkin()
        for labels, field in [
            ({"Env": "x"}, "facts.labels['Env']"),
            ({"env": "x" * 129}, "facts.labels['env']"),
            ({"env": "a\nb"}, "facts.labels['env']"),
            ({f"k{i}": "v" for i in range(33)}, "facts.labels"),
        ]:
            agent.facts.labels.clear()
            agent.facts.labels.update(labels)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agent.checkin()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (caught.value.details() or "").startswith(field + ":")
    async with server.app[app_keys.SESSIONS]() as session:
        stored = await session.scalar(select(Agent.labels).where(Agent.id == agent.agent_id))
    assert stored == {"env": "prod", "role": "db"}
    assert await _hosts(server, "env=prod", "role=db") == ["lab-1"]


async def test_real_agent_reports_its_config_labels(
    running_server: RunningServer, tmp_path: Path
) -> None:
    from test_end_to_end import enrolled_agent, run_agent

    root = tmp_path / "host"
    (root / "etc/flagpost-agent").mkdir(parents=True)
    (root / "etc/hostname").write_text("labelled-1\n")
    (root / "etc/flagpost-agent/agent.toml").write_text(
        'labels = { env = "prod", role = "db", "team.name" = "payments" }\n'
    )
    await enrolled_agent(running_server, root)
    await run_agent(root, "once")
    assert await _hosts(running_server, "env=prod", "role in (db,cache)", "team.name") == [
        "labelled-1"
    ]
    async with running_server.app[app_keys.SESSIONS]() as session:
        stored = await session.scalar(select(Agent.labels).where(Agent.hostname == "labelled-1"))
    assert stored == {"env": "prod", "role": "db", "team.name": "payments"}
