"""The spec filter of the History page and API on a real server: ``spec`` keeps its value in
the form and narrows the rows; a malformed spec id is a 400 naming ``spec``. (Every
``/api/v1/migrations`` operation: tests/test_api_conformance.py.)"""

from __future__ import annotations

import uuid

import grpc
from runs_testlib import AgentClient, ts
from server_testlib import logged_in_http

from flagpost.v1 import agent_pb2
from server.app import RunningServer


def spec_event(spec_id: str) -> agent_pb2.MigrationEvent:
    return agent_pb2.MigrationEvent(
        event_id=str(uuid.uuid4()),
        event_type=agent_pb2.EVENT_TYPE_MIGRATION_DETECTION,
        status=agent_pb2.EVENT_STATUS_SUCCESS,
        occurred_at=ts(),
        message=f"detected for {spec_id or 'built-in'}",
        spec_id=spec_id,
        spec_revision=1 if spec_id else 0,
    )


async def test_history_spec_filter(running_server: RunningServer) -> None:
    server = running_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agent = await AgentClient.enroll(server, channel)
        await agent.checkin(events=[spec_event("myapp"), spec_event("other"), spec_event("")])
    async with logged_in_http(server, "viewer", base_url=True) as http:
        async with http.get("/api/v1/events", params={"spec": "myapp"}) as reply:
            body = await reply.json()
        assert [(e["spec_id"], e["spec_revision"]) for e in body["events"]] == [("myapp", 1)]
        async with http.get("/history", params={"spec": "myapp"}) as reply:
            page = await reply.text()
        assert reply.status == 200 and 'name="spec" type="text" value="myapp"' in page
        assert "detected for myapp" in page and "detected for other" not in page
        for path in ("/api/v1/events", "/history"):
            async with http.get(path, params={"spec": "Not A Spec"}) as reply:
                assert reply.status == 400
                assert "spec:" in await reply.text()
