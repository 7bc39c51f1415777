"""Helpers for the runs tests: real gRPC check-ins carrying run updates and log lines."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent.uuid7 import uuid7_str as uuid7
from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer
from server.services import enrollment

FACTS = agent_pb2.HostFacts(
    hostname="web-1", os="Debian 12", kernel="6.1", agent_version="0.1.0", config_version="1"
)


def ts(when: datetime | None = None) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when or datetime.now(UTC))
    return stamp


def run_update(run_id: str, state: int, **overrides: Any) -> agent_pb2.RunUpdate:
    fields: dict[str, Any] = {
        "update_id": uuid7(),
        "run_id": run_id,
        "state": state,
        "migration_id": "agent-config",
        "migration_from": "1",
        "migration_to": "2",
        "occurred_at": ts(),
    }
    fields.update(overrides)
    return agent_pb2.RunUpdate(**fields)


def step(index: int, name: str, status: str, duration_ms: int = 0, error: str = "") -> Any:
    return agent_pb2.StepResult(
        index=index, name=name, status=status, duration_ms=duration_ms, error=error
    )


def log_line(run_id: str, seq: int, **overrides: Any) -> agent_pb2.LogLine:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "seq": seq,
        "timestamp": ts(),
        "level": "INFO",
        "source": "executor",
        "message": f"line {seq}",
    }
    fields.update(overrides)
    return agent_pb2.LogLine(**fields)


class AgentClient:
    """One enrolled agent talking real gRPC to a running server."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        agent_id: str,
        credential: str,
        facts: agent_pb2.HostFacts = FACTS,
    ) -> None:
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.agent_id = agent_id
        self.credential = credential
        self.facts = facts  # sent with every check-in: the credential is bound to its machine

    @classmethod
    async def enroll(
        cls, server: RunningServer, channel: grpc.aio.Channel, hostname: str = "web-1"
    ) -> AgentClient:
        token = await enrollment.create_token(server.app[app_keys.SESSIONS], uses=1)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        facts = agent_pb2.HostFacts()
        facts.CopyFrom(FACTS)
        facts.hostname = hostname
        reply = await stub.Enroll(agent_pb2.EnrollRequest(token=token, facts=facts))
        return cls(channel, reply.agent_id, reply.credential, facts)

    async def checkin(self, **fields: Any) -> agent_pb2.CheckInResponse:
        fields.setdefault("facts", self.facts)
        request = agent_pb2.CheckInRequest(agent_id=self.agent_id, **fields)
        response: agent_pb2.CheckInResponse = await self.stub.CheckIn(
            request, metadata=(("authorization", f"Bearer {self.credential}"),)
        )
        return response
