"""Flagpost server: gRPC check-ins and enrollment, the History web app, storage."""

__version__ = "0.1.0"
