"""Migration specs on the server, on SQLite and PostgreSQL: upload (revisions, "unchanged",
the validator's own errors, secret literals refused), hosts per version from real gRPC
check-ins, and preview / run / revert queued as signed actions an agent verifies with
``agent.action_verify.verify`` and whose params carry the exact spec."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import grpc
import pytest
from runs_testlib import AgentClient, run_update, ts

from agent.action_verify import verify
from agent.specs.validate import parse_spec, parse_spec_json
from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.domain import EventFilter
from server.errors import Conflict, InvalidArgument, NotFound
from server.services import history as history_service
from server.services import specs
from server.storage import specs as specs_store

SAMPLE = Path(__file__).parent / "agent_tests" / "specs" / "myapp.toml"
SOURCE = SAMPLE.read_text()


async def test_add_revisions_unchanged_and_diff(running_server: RunningServer) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    assert await specs.add_spec(sessions, SOURCE, "toml", "alice") == ("myapp", 1, True)
    # the same content again, also reformatted as JSON with the same fields: unchanged
    assert await specs.add_spec(sessions, SOURCE, "toml", "alice") == ("myapp", 1, False)
    detail = await specs.get_spec(sessions, "myapp")
    assert parse_spec_json(detail.spec.canonical) == parse_spec(SOURCE)
    assert await specs.add_spec(sessions, detail.spec.canonical, "json", "bob") == (
        "myapp",
        1,
        False,
    )
    changed = SOURCE.replace('title = "myapp:', 'title = "myapp v2:')
    assert await specs.add_spec(sessions, changed, "toml", "bob") == ("myapp", 2, True)
    detail = await specs.get_spec(sessions, "myapp")
    assert detail.spec.revision == 2 and detail.spec.source == changed
    assert detail.spec.sha256 == hashlib.sha256(detail.spec.canonical.encode()).hexdigest()
    assert [r.revision for r in detail.revisions] == [1, 2]
    assert (await specs.get_spec(sessions, "myapp", 1)).spec.source == SOURCE
    diff = await specs.diff_revisions(sessions, "myapp", 1, 2)
    assert '-title = "myapp: rename' in diff and '+title = "myapp v2: rename' in diff
    [summary] = await specs.list_specs(sessions)
    assert (summary.spec_id, summary.latest_revision, summary.target) == ("myapp", 2, "3")
    with pytest.raises(NotFound, match="no migration spec nope"):
        await specs.get_spec(sessions, "nope")
    with pytest.raises(NotFound, match="no revision 9"):
        await specs.get_spec(sessions, "myapp", 9)


@pytest.mark.parametrize(
    ("old", "new", "expected", "field"),
    [
        (
            'op = "rename_key"',
            'op = "rename"',
            "line 27: steps[0].ops[0].op: unknown operation 'rename'",
            "steps[0].ops[0].op",
        ),
        (
            '{ op = "set_key", key = "meta.schema", value = "2" },',
            '{ op = "set_key", key = "db.password", value = "hunter2" },',
            "line 28: steps[0].ops[1].value: a literal value for the secret key 'db.password'",
            "steps[0].ops[1].value",
        ),
    ],
)
async def test_validation_errors_name_line_and_field(
    running_server: RunningServer, old: str, new: str, expected: str, field: str
) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    with pytest.raises(InvalidArgument) as caught:
        await specs.add_spec(sessions, SOURCE.replace(old, new), "toml", "alice")
    assert str(caught.value).startswith(expected) and caught.value.field == field
    assert "hunter2" not in str(caught.value)
    assert await specs.list_specs(sessions) == []


def with_secret_keys(count: int) -> str:
    keys = ",".join(f'"k{i:05d}.x"' for i in range(count))
    return SOURCE.replace('target = "3"', f'target = "3"\nsecret = [{keys}]')


async def test_a_64_kib_spec_fits_a_signed_action_and_a_bigger_one_is_refused(
    running_server: RunningServer,
) -> None:
    server = running_server
    sessions = server.app[app_keys.SESSIONS]
    with pytest.raises(InvalidArgument) as caught:
        await specs.add_spec(sessions, with_secret_keys(6000), "toml", "alice")
    assert caught.value.field == "source" and "signed action" in str(caught.value)
    await specs.add_spec(sessions, with_secret_keys(5850), "toml", "alice")
    detail = await specs.get_spec(sessions, "myapp")
    assert 60 * 1024 < len(detail.spec.canonical.encode()) <= 64 * 1024
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel)
        action = await specs.request_run(
            sessions, server.app[app_keys.CONFIG], "myapp", agent.agent_id, "alice"
        )
        [signed] = (await agent.checkin()).actions
    pinned = server.app[app_keys.SERVICES].signer.public_key_bytes()
    assert verify(signed, pinned, agent.agent_id).params["spec"] == detail.spec.canonical
    assert signed.action_id == action.action_id
    # 16 such actions waiting (the most an agent gets) still fit the agents' 4 MiB limit
    assert 16 * signed.ByteSize() < 4 * 1024 * 1024 // 2


def report(agent: AgentClient, *versions: tuple[str, int, str, str]) -> None:
    """Make ``agent``'s next check-ins report ``versions`` in ``facts.specs``."""
    del agent.facts.specs[:]
    for spec_id, revision, version, error in versions:
        agent.facts.specs.add(spec_id=spec_id, revision=revision, version=version, error=error)


async def test_hosts_per_version_and_signed_actions(running_server: RunningServer) -> None:
    server = running_server
    sessions = server.app[app_keys.SESSIONS]
    config = server.app[app_keys.CONFIG]
    pinned = server.app[app_keys.SERVICES].signer.public_key_bytes()
    await specs.add_spec(sessions, SOURCE, "toml", "alice")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        a = await AgentClient.enroll(server, channel, "web-1")
        b = await AgentClient.enroll(server, channel, "web-2")
        c = await AgentClient.enroll(server, channel, "web-3")
        report(a, ("myapp", 1, "1", ""), ("other", 3, "x", ""))
        report(b, ("myapp", 1, "3", ""))
        report(c, ("myapp", 1, "", "cannot parse /etc/myapp/myapp.ini"))
        for agent in (a, b, c):
            await agent.checkin()
        [summary] = await specs.list_specs(sessions)
        assert {(v.version, v.agents) for v in summary.versions} == {("1", 1), ("3", 1), ("", 1)}
        assert summary.agents == 3 and summary.at_target == 1
        # a's next check-in no longer reports "other", and is now at 2: stored as reported
        report(a, ("myapp", 1, "2", ""))
        await a.checkin()
        detail = await specs.get_spec(sessions, "myapp")
        by_agent = {s.agent_id: s for s in detail.agents}
        assert by_agent[a.agent_id].version == "2" and by_agent[c.agent_id].error
        assert [s.hostname for s in detail.agents] == ["web-1", "web-2", "web-3"]
        async with sessions() as session:  # the spec a no longer reports is gone
            assert await specs_store.agent_states(session, "other") == []

        # preview: one signed action per agent, params exactly as the agent reads them
        canonical = detail.spec.canonical
        previews = await specs.request_preview(
            sessions, config, "myapp", [a.agent_id, b.agent_id], "alice"
        )
        reply = await a.checkin()
        [action] = [x for x in reply.actions if x.action_id == previews[0].action_id]
        verified = verify(action, pinned, a.agent_id)
        assert verified.kind == "preview_migration"
        assert verified.params == {
            "migration_id": "myapp",
            "spec_id": "myapp",
            "spec_revision": "1",
            "spec": canonical,
            "spec_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        }
        assert parse_spec_json(verified.params["spec"]) == parse_spec(SOURCE)
        pending = await specs.get_preview(sessions, previews[0].action_id)
        assert pending.pending
        # the agent answers with a preview event carrying the diffs
        diff = "--- a/etc/myapp/myapp.ini\n+++ b/etc/myapp/myapp.ini\n-addr\n+address\n"
        event = agent_pb2.MigrationEvent(
            event_id=str(uuid.uuid4()),
            event_type=agent_pb2.EVENT_TYPE_MIGRATION_PREVIEW,
            status=agent_pb2.EVENT_STATUS_SUCCESS,
            occurred_at=ts(),
            migration_from="1",
            migration_to="3",
            spec_id="myapp",
            spec_revision=1,
            action_id=previews[0].action_id,
            diffs=[
                agent_pb2.FileDiff(
                    path="/etc/myapp/myapp.ini", diff=diff, operations=["rename_key"], note="n"
                )
            ],
        )
        await a.checkin(events=[event], acknowledged_action_ids=[action.action_id])
        answer = await specs.get_preview(sessions, previews[0].action_id)
        assert not answer.pending and answer.status == "success"
        assert (answer.migration_from, answer.migration_to) == ("1", "3")
        assert [(d.path, d.diff, d.operations, d.note) for d in answer.diffs] == [
            ("/etc/myapp/myapp.ini", diff, ("rename_key",), "n")
        ]
        page = await history_service.list_events(sessions, EventFilter(spec_id="myapp"))
        assert [e.event_type for e in page.events] == ["migration_preview"]
        assert page.events[0].spec_revision == 1
        assert (await history_service.list_events(sessions, EventFilter(spec_id="x"))).events == []

        # run: the existing kind with the same spec params
        run_action = await specs.request_run(sessions, config, "myapp", b.agent_id, "alice")
        reply = await b.checkin()
        [signed] = [x for x in reply.actions if x.action_id == run_action.action_id]
        verified = verify(signed, pinned, b.agent_id)
        assert verified.kind == "run_migration" and verified.params["spec"] == canonical
        # revert: only a succeeded spec run
        run_id = str(uuid.uuid4())
        await b.checkin(
            run_updates=[
                run_update(
                    run_id,
                    agent_pb2.RUN_STATE_RUNNING,
                    migration_id="myapp",
                    spec_revision=1,
                    requested_by_action_id=run_action.action_id,
                )
            ]
        )
        with pytest.raises(Conflict, match="only a succeeded run"):
            await specs.request_revert(sessions, config, run_id, "alice")
        await b.checkin(
            run_updates=[
                run_update(
                    run_id, agent_pb2.RUN_STATE_SUCCEEDED, migration_id="myapp", spec_revision=1
                )
            ]
        )
        revert = await specs.request_revert(sessions, config, run_id, "alice")
        assert await specs.request_revert(sessions, config, run_id, "alice") == revert
        reply = await b.checkin()
        [signed] = [x for x in reply.actions if x.action_id == revert.action_id]
        verified = verify(signed, pinned, b.agent_id)
        assert (verified.kind, verified.params) == ("revert_run", {"run_id": run_id})
        revert_run = str(uuid.uuid4())
        await b.checkin(
            run_updates=[
                run_update(
                    revert_run,
                    agent_pb2.RUN_STATE_SUCCEEDED,
                    migration_id="myapp",
                    spec_revision=1,
                    reverts_run_id=run_id,
                    requested_by_action_id=revert.action_id,
                )
            ],
            acknowledged_action_ids=[revert.action_id],
        )
        with pytest.raises(Conflict, match=f"already reverted \\(by run {revert_run}\\)"):
            await specs.request_revert(sessions, config, run_id, "alice")
        with pytest.raises(Conflict, match="not a run of a migration spec"):
            await specs.request_revert(sessions, config, revert_run, "alice")
        assert len(signed.body) < 4 * 1024 * 1024 // 32
        with pytest.raises(NotFound):
            await specs.request_revert(sessions, config, str(uuid.uuid4()), "alice")
        with pytest.raises(NotFound, match="no agent"):
            await specs.request_run(sessions, config, "myapp", str(uuid.uuid4()), "alice")


async def test_spec_versions_write_only_what_changed(db_url: str) -> None:
    from datetime import UTC, datetime

    from server.domain import HostFacts, SpecVersionReport
    from server.services import enrollment
    from server.storage.db import create_engine_for_url, make_sessionmaker
    from server.storage.spec_versions import record_spec_versions

    engine = create_engine_for_url(db_url)
    try:
        sessions = make_sessionmaker(engine)
        token = await enrollment.create_token(sessions)
        agent_id, _ = await enrollment.enroll(sessions, token, HostFacts(hostname="h"))
        now = datetime.now(UTC)
        first = {agent_id: [SpecVersionReport("a", 1, "1"), SpecVersionReport("b", 1, "2")]}
        same = {agent_id: [SpecVersionReport("a", 1, "1"), SpecVersionReport("b", 1, "2")]}
        moved = {agent_id: [SpecVersionReport("a", 1, "2")]}
        written = []
        for reports in (first, same, moved, moved, {agent_id: []}):
            async with engine.begin() as conn:
                written.append(await conn.run_sync(record_spec_versions, reports, now))
        assert written == [2, 0, 2, 0, 1]  # new; nothing; a changed + b gone; nothing; a gone
    finally:
        await engine.dispose()
