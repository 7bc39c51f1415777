"""The gRPC transport: validation/conversion, the one interceptor, the servicer, the server."""
