"""The grpc.aio server factory: AgentService + standard health + reflection, one interceptor."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server.config import ServerConfig
from server.grpc.interceptors import FlagpostInterceptor
from server.grpc.servicer import AgentServicer
from server.services import Services
from server.tls import ServerTLS, grpc_server_credentials

AGENT_SERVICE: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


async def create_grpc_server(
    config: ServerConfig, services: Services, tls: ServerTLS | None = None
) -> tuple[grpc.aio.Server, int]:
    """Build the grpc.aio server bound to ``config.grpc_host:grpc_port`` (0 = a free port).

    Registers AgentService behind the FlagpostInterceptor, the standard health service (for ""
    and flagpost.v1.AgentService: SERVING, NOT_SERVING while ``services.health`` says the
    database is unreachable) and reflection for all three services. Returns
    ``(server, bound_port)``; the caller starts it and stops it (``await server.stop(grace)``).
    With ``tls`` (``server.tls.load_server_tls``) the port serves TLS only, requiring client
    certificates under mutual TLS; without it, plain text.
    """
    on_error = services.metrics.record_rpc_error if services.metrics is not None else None
    server = grpc.aio.server(
        interceptors=[FlagpostInterceptor(services.authenticator.identify, on_error)],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, never silently shared
        ],
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(services), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    async def publish(available: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if available
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", AGENT_SERVICE):
            await health_servicer.set(service, status)

    health_state = services.health
    await publish(health_state is None or health_state.available)
    if health_state is not None:
        health_state.add_listener(publish)
    reflection.enable_server_reflection(
        (AGENT_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    address = f"{config.grpc_host}:{config.grpc_port}"
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, grpc_server_credentials(tls))
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if not port:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server, int(port)
