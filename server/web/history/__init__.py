"""The History: its page, its live stream, its view models."""
