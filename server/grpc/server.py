"""The grpc.aio server factory: AgentService + standard health + reflection, one interceptor.

Start-up check (``check_protection``): every method of every registered service, enumerated
from the service descriptors, must either require a credential (the FlagpostInterceptor
authenticates it) or be on the explicit allow-list ``interceptors.PUBLIC_METHODS``; a missing
authentication interceptor or any other method callable without a credential raises
UnprotectedMethod naming it, and the server does not start.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server.config import ServerConfig
from server.errors import UnprotectedMethod
from server.grpc.interceptors import PUBLIC_METHODS, FlagpostInterceptor, method_path
from server.grpc.servicer import AgentServicer
from server.services import Services
from server.tls import ServerTLS, grpc_server_credentials

AGENT_SERVICE: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Every service create_grpc_server registers, as descriptors (what the start-up check walks).
REGISTERED_SERVICES: tuple[ServiceDescriptor, ...] = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)


def check_protection(
    services: Sequence[ServiceDescriptor], interceptors: Sequence[grpc.aio.ServerInterceptor]
) -> list[str]:
    """Refuse (UnprotectedMethod) unless a FlagpostInterceptor is installed and every method of
    ``services`` needs a credential or is on ``PUBLIC_METHODS``. Returns every method path
    checked."""
    guards = [i for i in interceptors if isinstance(i, FlagpostInterceptor)]
    if not guards:
        raise UnprotectedMethod(
            "the gRPC server has no authentication interceptor (FlagpostInterceptor): every "
            "method would be callable without a credential; refusing to start"
        )
    checked: list[str] = []
    for service in services:
        for method in service.methods:
            path = method_path(service, method.name)
            if path not in PUBLIC_METHODS and not all(
                guard.requires_authentication(path) for guard in guards
            ):
                raise UnprotectedMethod(
                    f"gRPC method {path} is callable without authentication but is not on the "
                    "allow-list (server.grpc.interceptors.PUBLIC_METHODS); refusing to start"
                )
            checked.append(path)
    return checked


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
    interceptors = [FlagpostInterceptor(services.authenticator.identify, on_error)]
    check_protection(REGISTERED_SERVICES, interceptors)
    server = grpc.aio.server(
        interceptors=interceptors,
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
        tuple(service.full_name for service in REGISTERED_SERVICES), server
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
