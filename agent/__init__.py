"""Flagpost agent: migrates this host's config, records every outcome, reports it to the server.

Imports only the standard library, grpcio, protobuf and ``flagpost.v1`` (never ``server``).
"""

__version__ = "0.1.0"
