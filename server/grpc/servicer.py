"""AgentService: thin. Validate via ``convert``, call the services, build the response.

Status codes are never decided here: errors propagate to ``interceptors.FlagpostInterceptor``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from flagpost.v1 import agent_pb2
from server.grpc import convert, convert_runs
from server.grpc.interceptors import bearer_token, current_agent_id, current_machine_id, peer_key
from server.services import Services, agents, enrollment
from server.services.ingest import RunInput
from server.services.ratelimit import RateLimiter
from server.services.rotation import CredentialRotation, credential_expiry


class AgentServicer:
    """flagpost.v1.AgentService; register with ``add_AgentServiceServicer_to_server``."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._config = services.config
        self._enroll_limit = RateLimiter("enrollment", services.config.enroll_rate_per_minute)
        self._rotation = CredentialRotation(
            services.sessions, services.config, services.authenticator
        )

    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.EnrollResponse:
        """Trade an enrollment token and host facts for an agent id and credential (expiring
        after ``credential_ttl_days``) and the server's signing key, which the agent pins.
        At most ``enroll_rate_per_minute`` attempts per client address (RateLimited; an IPv6
        client counts by its /64, see ``interceptors.peer_key``)."""
        self._enroll_limit.hit(peer_key(context.peer()))
        token, facts = convert.enroll_from_proto(request)
        expires_at = credential_expiry(self._config, datetime.now(UTC))
        agent_id, credential = await enrollment.enroll(
            self._services.sessions,
            token,
            facts,
            self._config.checkin_interval_seconds,
            credential_expires_at=expires_at,
        )
        return agent_pb2.EnrollResponse(
            agent_id=agent_id,
            credential=credential,
            checkin_interval_seconds=self._config.checkin_interval_seconds,
            server_signing_key=self._services.signer.public_key_bytes(),
            credential_expires_at=convert_runs.timestamp_proto(expires_at),
        )

    async def CheckIn(
        self, request: agent_pb2.CheckInRequest, context: grpc.aio.ServicerContext
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
        # Credential first use / rotation before anything is stored: a check-in that cannot
        # complete (database locked, shutdown) then leaves nothing half-done behind, and one
        # whose credential the database says was revoked meanwhile stores nothing.
        identity = await self._services.authenticator.identify(  # cached: no query
            bearer_token(context.invocation_metadata())
        )
        rotated = await self._rotation.after_checkin(identity, now)
        result = await self._services.ingest.submit(
            checkin.agent_id,
            checkin.facts,
            checkin.events,
            sent=len(checkin.ack_ids),
            runs=RunInput(runs.updates, runs.log_lines, runs.acked_action_ids, checkin.specs),
        )
        actions = list(result.actions)
        if self._services.inputs is not None:  # provide_input: answers added in memory only
            actions = await self._services.inputs.reveal(actions)
        return agent_pb2.CheckInResponse(
            new_credential=rotated.credential if rotated is not None else "",
            new_credential_expires_at=convert_runs.timestamp_proto(
                rotated.expires_at if rotated else None
            ),
            acknowledged_event_ids=checkin.ack_ids,
            next_checkin_seconds=self._config.checkin_interval_seconds,
            actions=[
                convert_runs.action_to_proto(action, self._services.signer) for action in actions
            ],
            acknowledged_run_update_ids=runs.update_ack_ids,
            acknowledged_log_lines=convert_runs.log_acks_to_proto(runs.log_acks),
        )
