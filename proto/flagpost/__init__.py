"""Flagpost's gRPC contract (generated protobuf modules live in flagpost.v1)."""
