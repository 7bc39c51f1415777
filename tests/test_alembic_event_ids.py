"""Revision 0005 (event ids unique per agent) down and up with data, on both databases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError
from test_runs_alembic import _insert_agent, _inspect, _run

from server.storage import schema

INSERT_EVENT = (
    "INSERT INTO update_events (id, event_id, agent_id, category, event_type, status, severity, "
    "message, error_message, error_detail, migration_from, migration_to, system_info, "
    "occurred_at, received_at) VALUES (:id, :e, :a, 'migration', 'migration_detection', "
    "'success', 'success', :m, '', '{\"k\": 1}', '1', '2', '{}', :now, :now)"
)
ROWS = "SELECT id, event_id, agent_id, message FROM update_events ORDER BY id"


async def test_0005_keeps_every_row_and_refuses_a_lossy_downgrade(empty_any_db_url: str) -> None:
    url = empty_any_db_url
    await asyncio.to_thread(schema.upgrade, url, "0004")
    now = datetime.now(UTC)
    agent_a, agent_b, shared = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for agent in (agent_a, agent_b):
        await _insert_agent(url, agent, now)
    # Ids with gaps (retention pruned some): the copy on SQLite must keep them as they are.
    await _run(url, INSERT_EVENT, id=7, e=shared, a=agent_a, m="a1", now=now)
    await _run(url, INSERT_EVENT, id=42, e=str(uuid.uuid4()), a=agent_b, m="b1", now=now)
    with pytest.raises(IntegrityError):  # 0004: one event id, once
        await _run(url, INSERT_EVENT, id=43, e=shared, a=agent_b, m="b2", now=now)
    before = await _run(url, ROWS)

    await asyncio.to_thread(schema.upgrade, url)
    assert await _run(url, ROWS) == before
    _, diff = await _inspect(url)
    assert diff == []
    await _run(url, INSERT_EVENT, id=43, e=shared, a=agent_b, m="b2", now=now)  # now allowed
    with pytest.raises(IntegrityError):  # still once per agent
        await _run(url, INSERT_EVENT, id=44, e=shared, a=agent_b, m="b3", now=now)
    assert await _run(url, "SELECT error_detail FROM update_events WHERE id = 7") in (
        [('{"k": 1}',)],
        [({"k": 1},)],
    )

    with pytest.raises(RuntimeError, match="1 event ids are stored for more than one agent"):
        await asyncio.to_thread(schema.downgrade, url, "0004")
    # 0005 refused: nothing below it went down (SQLite may have committed the steps above it)
    assert schema.current_revision(url) in ("0005", schema.head_revision())
    assert len(await _run(url, ROWS)) == 3

    await _run(url, "DELETE FROM update_events WHERE id = 43")
    await asyncio.to_thread(schema.downgrade, url, "0004")
    assert schema.current_revision(url) == "0004"
    assert await _run(url, ROWS) == before
    with pytest.raises(IntegrityError):  # the global constraint is back
        await _run(url, INSERT_EVENT, id=43, e=shared, a=agent_b, m="b2", now=now)
    await asyncio.to_thread(schema.upgrade, url)
    assert await _run(url, ROWS) == before
