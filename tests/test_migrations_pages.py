"""The migrations pages (``/migrations``, ``/migrations/{id}``, previews, the run-waiting page,
the run page's Revert button and the History's spec filter) on a real server (gRPC + web) on
SQLite and PostgreSQL; agents are real gRPC clients reporting ``facts.specs``, previews and
runs the way the agent does."""

from __future__ import annotations

import html
import json
import re
import tomllib
import uuid
from pathlib import Path

import aiohttp
import grpc
from runs_testlib import AgentClient, run_update, ts
from server_testlib import action_body, form_values, logged_in_http, refused_value_error

from flagpost.v1 import agent_pb2
from server import app_keys
from server.app import RunningServer
from server.services import specs

SAMPLE = Path(__file__).parent / "agent_tests" / "specs" / "myapp.toml"
SOURCE = SAMPLE.read_text()
XSS = "<script>window.__pwned=1</script>"
HOSTILE = SOURCE.replace(
    'title = "myapp: rename keys, then INI to TOML with the password split out"',
    f'title = "{XSS}"',
)


def report(agent: AgentClient, *versions: tuple[str, int, str, str]) -> None:
    """Make ``agent``'s next check-ins report ``versions`` in ``facts.specs``."""
    del agent.facts.specs[:]
    for spec_id, revision, version, error in versions:
        agent.facts.specs.add(spec_id=spec_id, revision=revision, version=version, error=error)


def upload(
    text: str = "", fmt: str = "toml", file: tuple[str, str] | None = None
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("format", fmt)
    form.add_field("text", text)
    if file is not None:
        name, content = file
        form.add_field("file", content.encode(), filename=name, content_type="text/plain")
    return form


async def test_viewer_sees_specs_bars_and_source_but_no_forms(
    running_server: RunningServer,
) -> None:
    server = running_server
    sessions = server.app[app_keys.SESSIONS]
    await specs.add_spec(sessions, SOURCE, "toml", "bob")
    await specs.add_spec(sessions, HOSTILE, "toml", "alice")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        a = await AgentClient.enroll(server, channel, "web-1")
        b = await AgentClient.enroll(server, channel, XSS)
        report(a, ("myapp", 2, "3", ""))
        report(b, ("myapp", 1, "", f"cannot parse {XSS}"))
        await a.checkin()
        await b.checkin()

    async with logged_in_http(server, "viewer", base_url=True) as http:
        async with http.get("/migrations") as reply:
            assert reply.status == 200
            page = await reply.text()
        assert 'href="/migrations"' in page and 'aria-current="page">Migrations' in page
        assert 'id="upload-form"' not in page
        assert XSS not in page and html.escape(XSS, quote=False) in page
        assert '<a href="/migrations/myapp"><code>myapp</code></a>' in page
        assert "1 of 2 at target" in page
        assert 'class="bar-success"' in page and 'class="bar-error"' in page

        async with http.get("/migrations/myapp?revision=1") as reply:
            assert reply.status == 200
            assert "latest is revision 2" in await reply.text()
        async with http.get("/migrations/myapp") as reply:
            assert reply.status == 200
            detail = await reply.text()
        assert XSS not in detail and html.escape(XSS, quote=False) in detail
        assert 'id="preview-form"' not in detail and 'id="run-form"' not in detail
        assert '<li id="L1"><span class="source-text">id = &#34;myapp&#34;</span></li>' in detail
        rows = re.findall(r'<tr data-agent-id="([^"]+)"', detail)
        assert len(rows) == 2
        assert "cannot parse &lt;script&gt;" in detail

        async with http.get("/migrations/myapp?diff_from=1&diff_to=2") as reply:
            diff = await reply.text()
        assert '<span class="diff-line diff-hunk">@@' in diff
        assert '<span class="diff-line diff-add">+title = &#34;&lt;script&gt;' in diff
        assert '<span class="diff-line diff-del">-title = &#34;myapp: rename keys' in diff
        assert XSS not in diff

        async with http.get("/migrations/nope") as reply:
            assert reply.status == 404
        async with http.get("/migrations/myapp?revision=9") as reply:
            assert reply.status == 404
        async with http.post("/migrations", data=upload(SOURCE), allow_redirects=False) as reply:
            assert reply.status == 403
        async with http.post(
            "/migrations/myapp/runs", data={"agent": a.agent_id}, allow_redirects=False
        ) as reply:
            assert reply.status == 403


async def test_admin_uploads_and_sees_the_validators_error_on_the_form(
    running_server: RunningServer,
) -> None:
    async with logged_in_http(running_server, "admin", base_url=True) as http:
        async with http.get("/migrations") as reply:
            page = await reply.text()
        assert 'id="upload-form"' in page and "No migration specs yet." in page

        broken = SOURCE.replace('op = "rename_key"', 'op = "rename"') + f"# {XSS}\n"
        async with http.post("/migrations", data=upload(broken), allow_redirects=False) as reply:
            assert reply.status == 400
            page = await reply.text()
        [errors] = re.findall(r'<div class="form-errors".*?</div>', page, re.S)
        assert "line 27: steps[0].ops[0].op: unknown operation" in errors, errors
        textarea = re.search(r'<textarea id="spec-text"[^>]*>(.*?)</textarea>', page, re.S)
        assert textarea is not None and html.unescape(textarea.group(1)) == broken.strip()
        assert XSS not in page
        assert await specs.list_specs(running_server.app[app_keys.SESSIONS]) == []

        async with http.post("/migrations", data=upload(SOURCE), allow_redirects=False) as reply:
            assert reply.status == 303
            assert reply.headers["Location"] == "/migrations/myapp?revision=1&saved=new"
        async with http.get("/migrations/myapp?revision=1&saved=new") as reply:
            assert "Saved as revision 1." in await reply.text()
        # The same content again is no new revision; a file wins over the textarea.
        async with http.post(
            "/migrations",
            data=upload("ignored", file=("myapp.toml", SOURCE)),
            allow_redirects=False,
        ) as reply:
            assert reply.headers["Location"] == "/migrations/myapp?revision=1&saved=same"
        json_spec = json.dumps({**tomllib.loads(SOURCE), "id": "myapp-json"})
        async with http.post(
            "/migrations", data=upload(file=("j.json", json_spec)), allow_redirects=False
        ) as reply:
            assert reply.headers["Location"] == "/migrations/myapp-json?revision=1&saved=new"
        async with http.post("/migrations", data=upload("  "), allow_redirects=False) as reply:
            assert reply.status == 400
            assert "text: is empty" in await reply.text()


async def test_preview_run_and_revert_from_the_pages(running_server: RunningServer) -> None:
    server = running_server
    sessions = server.app[app_keys.SESSIONS]
    await specs.add_spec(sessions, SOURCE, "toml", "alice")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin", base_url=True) as http,
    ):
        a = await AgentClient.enroll(server, channel, "web-1")
        b = await AgentClient.enroll(server, channel, "web-2")
        async with http.get("/migrations/myapp") as reply:
            page = await reply.text()
        assert 'id="preview-form"' in page and f'value="{a.agent_id}"' in page

        async with http.post(
            "/migrations/myapp/previews",
            data=[("agent", a.agent_id), ("agent", b.agent_id), ("revision", "1")],
            allow_redirects=False,
        ) as reply:
            assert reply.status == 303
            previews_url = reply.headers["Location"]
        async with http.get(previews_url) as reply:
            page = await reply.text()
        assert page.count('data-pending="true"') == 2
        assert '<meta http-equiv="refresh"' in page and "Waiting for 2 hosts" in page

        reply_a = await a.checkin()
        [action] = [action_body(x) for x in reply_a.actions]
        assert action.kind == "preview_migration"
        diff = (
            "--- a/etc/myapp/myapp.ini\n+++ b/etc/myapp/myapp.ini\n@@ -1,3 +1,3 @@\n"
            f" [server]\n-addr = 0.0.0.0\n+address = 0.0.0.0\n+{XSS}\n"
        )
        event = agent_pb2.MigrationEvent(
            event_id=str(uuid.uuid4()),
            event_type=agent_pb2.EVENT_TYPE_MIGRATION_PREVIEW,
            status=agent_pb2.EVENT_STATUS_SUCCESS,
            occurred_at=ts(),
            migration_from="1",
            migration_to="3",
            spec_id="myapp",
            spec_revision=1,
            action_id=action.action_id,
            diffs=[
                agent_pb2.FileDiff(
                    path="/etc/myapp/myapp.ini", diff=diff, operations=["rename_key"]
                )
            ],
        )
        await a.checkin(events=[event], acknowledged_action_ids=[action.action_id])
        async with http.get(previews_url) as reply:
            page = await reply.text()
        assert page.count('data-pending="true"') == 1 and "Waiting for 1 host " in page
        assert '<span class="diff-line diff-del">-addr = 0.0.0.0</span>' in page
        assert '<span class="diff-line diff-add">+address = 0.0.0.0</span>' in page
        assert '<span class="diff-line diff-hunk">@@ -1,3 +1,3 @@</span>' in page
        assert XSS not in page and html.escape(XSS, quote=False) in page
        assert "Changes planned" in page and "1 → 3" in page

        # Run: the waiting page until the agent reports the run, then the run page.
        async with http.post(
            "/migrations/myapp/runs", data={"agent": b.agent_id}, allow_redirects=False
        ) as reply:
            assert reply.status == 303
            wait_url = reply.headers["Location"]
        [run_action] = [
            action_body(x)
            for x in (await b.checkin()).actions
            if action_body(x).kind == "run_migration"
        ]
        assert run_action.action_id in wait_url
        async with http.get(wait_url, allow_redirects=False) as reply:
            assert reply.status == 200
            page = await reply.text()
        assert "Waiting for the agent" in page and run_action.action_id in page
        run_id = str(uuid.uuid4())
        spec_run = {
            "migration_id": "myapp",
            "spec_revision": 1,
            "migration_from": "1",
            "migration_to": "3",
        }
        await b.checkin(
            run_updates=[
                run_update(
                    run_id,
                    agent_pb2.RUN_STATE_RUNNING,
                    requested_by_action_id=run_action.action_id,
                    **spec_run,
                )
            ],
            acknowledged_action_ids=[run_action.action_id],
        )
        async with http.get(wait_url, allow_redirects=False) as reply:
            assert reply.status == 303 and reply.headers["Location"] == f"/runs/{run_id}"
        async with http.get(f"/runs/{run_id}") as reply:
            page = await reply.text()
        assert 'id="revert-form"' not in page  # still running
        assert '<a href="/migrations/myapp?revision=1">myapp</a>' in page
        await b.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_SUCCEEDED, **spec_run)])
        async with http.get(f"/runs/{run_id}") as reply:
            page = await reply.text()
        assert 'id="revert-form"' in page and f'action="/runs/{run_id}/revert"' in page
        async with http.post(f"/runs/{run_id}/revert", allow_redirects=False) as reply:
            assert reply.status == 303
            location = reply.headers["Location"]
        assert location.startswith(f"/runs/{run_id}?revert=requested&revert_action=")
        kinds = [action_body(x) for x in (await b.checkin()).actions]
        [revert] = [k for k in kinds if k.kind == "revert_run"]
        assert revert.params["run_id"] == run_id and revert.action_id in location
        async with http.get(location) as reply:
            assert 'id="revert-run-link"' not in await reply.text()  # not reported yet
        revert_id = str(uuid.uuid4())
        await b.checkin(
            run_updates=[
                run_update(
                    revert_id,
                    agent_pb2.RUN_STATE_SUCCEEDED,
                    requested_by_action_id=revert.action_id,
                    reverts_run_id=run_id,
                    **spec_run,
                )
            ],
            acknowledged_action_ids=[revert.action_id],
        )
        async with http.get(location) as reply:
            page = await reply.text()
        assert f'<a href="/runs/{revert_id}" id="revert-run-link">' in page
        async with http.get(f"/runs/{revert_id}") as reply:
            page = await reply.text()
        assert f'reverts <a href="/runs/{run_id}">' in page and 'id="revert-form"' not in page
        async with http.get(f"/runs/{run_id}") as reply:  # reverted: no second Revert
            page = await reply.text()
        assert 'id="revert-form"' not in page
        assert (
            f'id="reverted-note">This run\'s files were put back by <a href="/runs/{revert_id}">'
            in page
        )
        async with http.get("/runs") as reply:
            assert '<span class="tag tag-spec">r1</span>' in await reply.text()

        # The History: filter by spec; rows name the spec and revision.
        async with http.get("/history", params={"spec": "myapp"}) as reply:
            page = await reply.text()
        assert 'name="spec" type="text" value="myapp"' in page
        assert page.count('<li class="event ') == 1
        assert '<span class="tag tag-spec"' in page and "myapp r1" in page
        async with http.get("/history", params={"spec": "other"}) as reply:
            page = await reply.text()
        assert page.count('<li class="event ') == 0

    async with logged_in_http(server, "viewer", base_url=True) as http:
        async with http.get(f"/runs/{run_id}") as reply:
            assert 'id="revert-form"' not in await reply.text()
        async with http.post(f"/runs/{run_id}/revert", allow_redirects=False) as reply:
            assert reply.status == 403


async def test_a_refused_action_ends_the_waiting(running_server: RunningServer) -> None:
    """An agent that refuses a spec action reports a notice naming it: the preview and the
    run-waiting pages show it and stop reloading."""
    server = running_server
    await specs.add_spec(server.app[app_keys.SESSIONS], SOURCE, "toml", "alice")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin", base_url=True) as http,
    ):
        a = await AgentClient.enroll(server, channel, "web-1")
        async with http.post(
            "/migrations/myapp/previews", data={"agent": a.agent_id}, allow_redirects=False
        ) as reply:
            previews_url = reply.headers["Location"]
        async with http.post(
            "/migrations/myapp/runs", data={"agent": a.agent_id}, allow_redirects=False
        ) as reply:
            wait_url = reply.headers["Location"]
        actions = [action_body(x) for x in (await a.checkin()).actions]
        assert {x.kind for x in actions} == {"preview_migration", "run_migration"}
        why = f"spec myapp revision 1: /etc/myapp is outside the allowed paths {XSS}"
        notices = [
            agent_pb2.MigrationEvent(
                event_id=str(uuid.uuid4()),
                event_type=agent_pb2.EVENT_TYPE_AGENT_NOTICE,
                status=agent_pb2.EVENT_STATUS_WARNING,
                occurred_at=ts(),
                message=f"Action {x.action_id} refused: {why}",
                action_id=x.action_id,
            )
            for x in actions
        ]
        await a.checkin(events=notices, acknowledged_action_ids=[x.action_id for x in actions])
        for url in (previews_url, wait_url):
            async with http.get(url, allow_redirects=False) as reply:
                assert reply.status == 200
                page = await reply.text()
            assert "outside the allowed paths" in page and XSS not in page
            assert '<meta http-equiv="refresh"' not in page
        assert "Refused by the agent" in page or "did not start the run" in page


async def test_a_host_already_at_the_target_ends_the_run_wait(
    running_server: RunningServer,
) -> None:
    server = running_server
    await specs.add_spec(server.app[app_keys.SESSIONS], SOURCE, "toml", "alice")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        logged_in_http(server, "admin", base_url=True) as http,
    ):
        a = await AgentClient.enroll(server, channel, "web-1")
        async with http.post(
            "/migrations/myapp/runs", data={"agent": a.agent_id}, allow_redirects=False
        ) as reply:
            wait_url = reply.headers["Location"]
        [action] = [action_body(x) for x in (await a.checkin()).actions]
        detection = agent_pb2.MigrationEvent(
            event_id=str(uuid.uuid4()),
            event_type=agent_pb2.EVENT_TYPE_MIGRATION_DETECTION,
            status=agent_pb2.EVENT_STATUS_NOT_NEEDED,
            occurred_at=ts(),
            migration_from="3",
            migration_to="3",
            message="myapp is at version 3 already",
            spec_id="myapp",
            spec_revision=1,
            action_id=action.action_id,
        )
        await a.checkin(events=[detection], acknowledged_action_ids=[action.action_id])
        async with http.get(wait_url, allow_redirects=False) as reply:
            assert reply.status == 200
            page = await reply.text()
        assert 'id="run-not-needed"' in page and "myapp is at version 3 already" in page
        assert '<meta http-equiv="refresh"' not in page


async def test_a_bad_revision_number_is_shown_at_its_field_with_the_others_applied(
    running_server: RunningServer,
) -> None:
    sessions = running_server.app[app_keys.SESSIONS]
    await specs.add_spec(sessions, SOURCE, "toml", "bob")
    await specs.add_spec(sessions, HOSTILE, "toml", "alice")
    await specs.add_spec(sessions, SOURCE.replace('id = "myapp"', 'id = "solo"'), "toml", "bob")

    async with logged_in_http(running_server, "viewer", base_url=True) as http:

        async def refused(url: str) -> str:
            async with http.get(url) as reply:
                assert reply.status == 400, url
                return await reply.text()

        # The revision shown: refused, so the latest, with the diff asked for.
        page = await refused("/migrations/myapp?revision=first&diff_from=1&diff_to=2")
        assert refused_value_error(page, "revision").startswith("must be an integer between 1")
        assert form_values(page, "revision") == ["first"]  # as typed, in a field of its own
        assert '<span class="tag">revision 2</span>' in page
        assert '<span class="diff-line diff-hunk">@@' in page
        # A compared revision: revision 1 is shown, no diff; the refused number stays chosen.
        page = await refused("/migrations/myapp?revision=1&diff_from=0&diff_to=2")
        assert refused_value_error(page, "diff_from").startswith("must be an integer between 1")
        assert form_values(page, "diff_from") == ["0"] and form_values(page, "revision") == ["1"]
        assert "latest is revision 2" in page and 'class="diff-line' not in page
        page = await refused("/migrations/myapp?diff_from=1&diff_to=2&diff_to=1")
        assert refused_value_error(page, "diff_to") == "must be given at most once"
        assert form_values(page, "diff_to") == ["2"]
        # A spec with one revision has no compare form, but shows the refused field.
        page = await refused("/migrations/solo?revision=0")
        assert refused_value_error(page, "revision").startswith("must be an integer between 1")
        assert form_values(page, "revision") == ["0"]
        async with http.get("/migrations/solo?revision=2") as reply:
            assert reply.status == 404  # a revision that does not exist is still not found
