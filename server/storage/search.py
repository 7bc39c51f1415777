"""The History's indexed free-text search: names and SQL shared by the alembic migration 0011,
the queries (:mod:`server.storage.history`) and the schema comparison.

SQLite: ``update_events_search``, an external-content FTS5 table (``tokenize='trigram'``,
case-insensitive) over ``message`` and ``error_message`` with
``rowid = update_events.id``, kept in step by triggers (alembic 0011), so in the inserting /
deleting transaction (ingest, retention, an agent's cascade delete). PostgreSQL: one GIN
trigram index (``pg_trgm``) on the concatenation of the same columns.

The event and run ids are not indexed: trigrams of random UUIDs cost three times the text's
(about 110 against 38 µs per row on SQLite) for searches that are rare. A text that could be
part of an id (hex digits and dashes only, :func:`could_be_id`) also scans the ids plainly.

Either is only a *prefilter* (a superset of the rows containing the text): the query keeps the
exact per-column case-insensitive substring test, so results are those of the plain scan.
A text of fewer than 3 characters has no trigram: it is matched by the plain per-column test,
a bounded number of rows per page (``server.storage.history._short_text_rows``).
"""

from __future__ import annotations

import re

FTS_TABLE = "update_events_search"
FTS_COLUMNS = ("message", "error_message")
PG_INDEX = "ix_update_events_search"
# Must be written exactly as the index expression for PostgreSQL's planner to match it.
PG_EXPRESSION = "(update_events.message || ' ' || update_events.error_message)"
MIN_INDEXED_LENGTH = 3  # trigram: a shorter text cannot use the index


def is_search_object(name: str | None) -> bool:
    """Whether ``name`` is the FTS table, one of its shadow tables, or the trigram index: not
    in the models' metadata (the schema comparison must skip them)."""
    if name is None:
        return False
    return name in (FTS_TABLE, PG_INDEX) or name.startswith(f"{FTS_TABLE}_")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """alembic ``include_name`` hook: everything except the search objects."""
    return not (type_ in ("table", "index") and is_search_object(name))


def match_phrase(text: str) -> str:
    """``text`` as one FTS5 phrase (double quotes doubled): with the trigram tokenizer, rows
    containing it as a substring (case-insensitively)."""
    return '"' + text.replace('"', '""') + '"'


_ID_CHARS = re.compile(r"[0-9a-fA-F-]+")


def could_be_id(text: str) -> bool:
    """Whether ``text`` could be part of an event or run id (a UUID): those are not indexed."""
    return _ID_CHARS.fullmatch(text) is not None
