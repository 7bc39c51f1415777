"""Display formatting the pages share: human-readable sizes, and the History's host facts."""

from __future__ import annotations

from server.web.format import human_bytes
from server.web.history.views import system_items


def test_human_bytes() -> None:
    assert human_bytes(0) == "—"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(12 * 1024**3) == "12.0 GiB"


def test_byte_counts_among_host_facts_read_in_units() -> None:
    items = system_items({"os": "Debian", "disk_free_bytes": str(12 * 1024**3), "x_bytes": "n/a"})
    assert items == (
        ("disk_free_bytes", "12.0 GiB (12,884,901,888 bytes)"),
        ("os", "Debian"),
        ("x_bytes", "n/a"),
    )
