"""Prebuilt bulk ``INSERT … ON CONFLICT DO NOTHING`` statements for the ingest hot path.

SQLite gets multi-row ``VALUES`` statements in a few fixed chunk sizes (so its statement cache
stays warm, and 1,024 rows of up to 31 columns stay under SQLite's 32,766 bound variables);
PostgreSQL gets one ``INSERT … SELECT * FROM unnest(…)`` per batch. The SQL text is built once,
at import, from constants only: no value ever reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

SQLITE_CHUNKS = (1024, 256, 64, 16, 4, 1)


class BulkInsert:
    """The insert statements of one table: ``conflict`` names the unique columns whose
    duplicates are skipped; ``returning`` is an optional ``RETURNING`` column list."""

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        pg_types: Sequence[str],
        conflict: str,
        returning: str = "",
    ) -> None:
        if len(columns) != len(pg_types):
            raise ValueError("one PostgreSQL array type per column")
        tail = f" ON CONFLICT ({conflict}) DO NOTHING" + (
            f" RETURNING {returning}" if returning else ""
        )
        head = f"INSERT INTO {table} ({','.join(columns)})"
        group = "(" + ",".join("?" * len(columns)) + ")"
        self._sqlite = {
            size: f"{head} VALUES " + ",".join([group] * size) + tail for size in SQLITE_CHUNKS
        }
        arrays = ",".join(f"${i}::{t}[]" for i, t in enumerate(pg_types, start=1))
        self.postgresql = f"{head} SELECT * FROM unnest({arrays}){tail}"  # noqa: S608 (constants)

    def sqlite_statements(
        self, rows: Sequence[Sequence[Any]]
    ) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """``(sql, parameters)`` pairs that insert ``rows`` in order, largest chunks first."""
        start = 0
        total = len(rows)
        for size in SQLITE_CHUNKS:
            while total - start >= size:
                yield self._sqlite[size], tuple(chain.from_iterable(rows[start : start + size]))
                start += size
