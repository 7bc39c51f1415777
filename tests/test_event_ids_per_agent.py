"""Event ids are unique per agent: one agent cannot pre-claim another agent's ``event_id``.

Real server on port 0, real gRPC clients with two agents' own credentials, both databases.
"""

from __future__ import annotations

import uuid

import grpc
from sqlalchemy import select
from test_grpc_ingest import FACTS, auth, channel, enroll, event

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer
from server.storage.models import UpdateEvent


async def test_the_same_event_id_from_two_agents_is_stored_for_both(
    running_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    agent_a, credential_a = await enroll(running_server, channel)
    agent_b, credential_b = await enroll(running_server, channel)
    shared = str(uuid.uuid4())

    async def check_in(credential: str, message: str) -> agent_pb2.CheckInResponse:
        reply: agent_pb2.CheckInResponse = await stub.CheckIn(
            agent_pb2.CheckInRequest(facts=FACTS, events=[event(event_id=shared, message=message)]),
            metadata=auth(credential),
        )
        return reply

    first = await check_in(credential_b, "B's event")  # B claims the id first
    second = await check_in(credential_a, "A's own event")
    again = await check_in(credential_a, "A's event, re-sent")  # a true duplicate
    for reply in (first, second, again):
        assert list(reply.acknowledged_event_ids) == [shared]

    async with running_server.app[app_keys.SESSIONS]() as session:
        rows = (
            await session.execute(
                select(UpdateEvent.agent_id, UpdateEvent.message).where(
                    UpdateEvent.event_id == shared
                )
            )
        ).all()
    assert sorted(rows) == sorted([(agent_b, "B's event"), (agent_a, "A's own event")])
    writer = running_server.app[app_keys.SERVICES].ingest
    assert writer.events_stored == 2
    assert writer.duplicates == 1


__all__ = ["channel"]  # the fixture, imported from test_grpc_ingest
