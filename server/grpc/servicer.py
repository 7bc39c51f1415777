"""AgentService: thin. Validate via ``convert``, call the services, build the response.

Status codes are never decided here: errors propagate to ``interceptors.FlagpostInterceptor``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flagpost.v1 import agent_pb2
from server.grpc import convert, convert_runs
from server.grpc.interceptors import current_agent_id, current_machine_id
from server.services import Services, agents, enrollment
from server.services.ingest import RunInput


class AgentServicer:
    """flagpost.v1.AgentService; register with ``add_AgentServiceServicer_to_server``."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._config = services.config

    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: object
    ) -> agent_pb2.EnrollResponse:
        """Trade an enrollment token and host facts for an agent id and credential."""
        token, facts = convert.enroll_from_proto(request)
        agent_id, credential = await enrollment.enroll(
            self._services.sessions, token, facts, self._config.checkin_interval_seconds
        )
        return agent_pb2.EnrollResponse(
            agent_id=agent_id,
            credential=credential,
            checkin_interval_seconds=self._config.checkin_interval_seconds,
        )

    async def CheckIn(
        self, request: agent_pb2.CheckInRequest, context: object
    ) -> agent_pb2.CheckInResponse:
        """Store the check-in's events, run updates and log lines in one transaction (ack only
        after commit), refresh the agent's facts, and hand out its pending actions. Refused
        unless the facts carry the machine id the credential is bound to."""
        now = datetime.now(UTC)
        checkin = convert.checkin_from_proto(request, current_agent_id(), self._config, now)
        agents.check_machine(
            current_machine_id(), request.HasField("facts"), request.facts.machine_id
        )
        runs = convert_runs.runs_part_from_proto(
            request, checkin.agent_id, self._config, int(now.timestamp())
        )
        result = await self._services.ingest.submit(
            checkin.agent_id,
            checkin.facts,
            checkin.events,
            sent=len(checkin.ack_ids),
            runs=RunInput(runs.updates, runs.log_lines, runs.acked_action_ids),
        )
        return agent_pb2.CheckInResponse(
            acknowledged_event_ids=checkin.ack_ids,
            next_checkin_seconds=self._config.checkin_interval_seconds,
            actions=[convert_runs.action_to_proto(action) for action in result.actions],
            acknowledged_run_update_ids=runs.update_ack_ids,
            acknowledged_log_lines=convert_runs.log_acks_to_proto(runs.log_acks),
        )
