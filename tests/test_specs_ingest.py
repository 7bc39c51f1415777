"""Check-in validation of the spec fields (``server.grpc.convert``): the preview and revert
event types with their statuses, spec ids, action ids, diffs and ``facts.specs`` within their
limits, every refusal an InvalidArgument naming the field; and the run fields of a revert."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from runs_testlib import FACTS, run_update, ts

from flagpost.v1 import agent_pb2
from server.config import load_config
from server.domain import Category, EventType, FileDiff, SpecVersionReport
from server.errors import InvalidArgument
from server.grpc import convert
from server.grpc.convert_runs import run_update_from_proto

CONFIG = load_config(env={})
AGENT = str(uuid.uuid4())


def event(**overrides: Any) -> agent_pb2.MigrationEvent:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": agent_pb2.EVENT_TYPE_MIGRATION_PREVIEW,
        "status": agent_pb2.EVENT_STATUS_SUCCESS,
        "occurred_at": ts(),
        "spec_id": "myapp",
        "spec_revision": 2,
    }
    fields.update(overrides)
    return agent_pb2.MigrationEvent(**fields)


def checkin(*events: agent_pb2.MigrationEvent, **facts: Any) -> convert.CheckIn:
    host = agent_pb2.HostFacts()
    host.CopyFrom(FACTS)
    for item in facts.get("specs", ()):
        host.specs.add(**item)
    request = agent_pb2.CheckInRequest(events=list(events), facts=host)
    return convert.checkin_from_proto(request, AGENT, CONFIG)


def test_preview_and_revert_events_are_stored_with_their_spec_fields() -> None:
    action = str(uuid.uuid4()).upper()
    diff = agent_pb2.FileDiff(path="/etc/a.ini", diff="-a\n+b\n", operations=["set_key a"])
    got = checkin(
        event(action_id=action, diffs=[diff]),
        event(
            event_type=agent_pb2.EVENT_TYPE_MIGRATION_REVERT, status=agent_pb2.EVENT_STATUS_FAILED
        ),
        specs=[{"spec_id": "myapp", "revision": 2, "version": "1"}, {"spec_id": "b", "error": "x"}],
    )
    preview, revert = got.events
    assert (preview.event_type, preview.category) == (
        EventType.MIGRATION_PREVIEW,
        Category.MIGRATION,
    )
    assert (preview.spec_id, preview.spec_revision, preview.action_id) == (
        "myapp",
        2,
        action.lower(),
    )
    assert preview.diffs == (FileDiff("/etc/a.ini", "-a\n+b\n", ("set_key a",), ""),)
    assert revert.event_type == EventType.MIGRATION_REVERT and revert.diffs == ()
    assert got.specs == (
        SpecVersionReport("b", 0, "", "x"),
        SpecVersionReport("myapp", 2, "1", ""),
    )


BIG = "x" * (256 * 1024 + 1)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (event(spec_id="Bad Id"), "events[0].spec_id"),
        (event(action_id="nope"), "events[0].action_id"),
        (event(status=agent_pb2.EVENT_STATUS_PARTIAL), "events[0].status"),
        (event(diffs=[agent_pb2.FileDiff(path="/a")] * 65), "events[0].diffs"),
        (event(diffs=[agent_pb2.FileDiff(path="/a", diff=BIG)]), "events[0].diffs[0].diff"),
        (event(diffs=[agent_pb2.FileDiff(path="/" * 4097)]), "events[0].diffs[0].path"),
        (
            event(diffs=[agent_pb2.FileDiff(path="/a", operations=["o"] * 257)]),
            "events[0].diffs[0].operations",
        ),
        (
            event(diffs=[agent_pb2.FileDiff(path="/a", operations=["o", "p" * 1025])]),
            "events[0].diffs[0].operations[1]",
        ),
        (event(event_type=99), "events[0].event_type"),
    ],
)
def test_bad_event_fields_are_refused_naming_the_field(
    message: agent_pb2.MigrationEvent, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        checkin(message)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("specs", "field"),
    [
        ([{"spec_id": f"s{i}"} for i in range(257)], "facts.specs"),
        ([{"spec_id": ""}], "facts.specs[0].spec_id"),
        ([{"spec_id": "ok"}, {"spec_id": "NOT OK"}], "facts.specs[1].spec_id"),
        ([{"spec_id": "ok", "version": "v" * 65}], "facts.specs[0].version"),
    ],
)
def test_bad_facts_specs_are_refused_naming_the_field(specs: list[Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        checkin(specs=specs)
    assert caught.value.field == field


def test_revert_run_update_fields() -> None:
    target = str(uuid.uuid4())
    update = run_update_from_proto(
        run_update(
            str(uuid.uuid4()), agent_pb2.RUN_STATE_RUNNING, spec_revision=3, reverts_run_id=target
        ),
        0,
        AGENT,
        int(ts().seconds),
    )
    assert (update.spec_revision, update.reverts_run_id) == (3, target)
    with pytest.raises(InvalidArgument) as caught:
        run_update_from_proto(
            run_update(str(uuid.uuid4()), agent_pb2.RUN_STATE_RUNNING, reverts_run_id="x"),
            0,
            AGENT,
            int(ts().seconds),
        )
    assert caught.value.field == "run_updates[0].reverts_run_id"
