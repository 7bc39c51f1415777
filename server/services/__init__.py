"""Services: the business operations. They own transactions and call the storage layer.

``Services`` bundles what the transports (gRPC servicer, web handlers) need, built once per
process by ``server.app``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.services.agents import Authenticator
from server.services.health import DatabaseHealth
from server.services.ingest import IngestWriter
from server.signing import ActionSigner

if TYPE_CHECKING:
    from server.metrics import ServerMetrics
    from server.services.inputs import InputVault


@dataclass(frozen=True, slots=True)
class Services:
    """The running server's service objects."""

    config: ServerConfig
    sessions: async_sessionmaker[AsyncSession]
    authenticator: Authenticator
    ingest: IngestWriter
    signer: ActionSigner  # signs every action sent to an agent (server.signing)
    health: DatabaseHealth | None = None  # None: assume the database is always reachable
    metrics: ServerMetrics | None = None
    inputs: InputVault | None = None  # answers to input requests (server.services.inputs)
