"""kill -9 the server at random moments while 50 simulated agents send 20,000 events.

Quick: 5 kill rounds on SQLite. Long (FLAGPOST_CHAOS=long): 20 rounds, SQLite and PostgreSQL.
Every event an agent recorded (its ``Outbox.add`` returned) must be in ``update_events`` exactly
once. Prints recorded / stored / duplicates / lost.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from bench.fleet import Fleet, FleetSpec, delivery, environment, run_kills, stored_event_ids
from chaos_testlib import LONG, databases, pick, require_postgresql


@pytest.mark.slow
@pytest.mark.parametrize("kind", databases())
def test_server_kill9_rounds_lose_and_duplicate_nothing(tmp_path: Path, kind: str) -> None:
    if kind == "postgresql":
        require_postgresql()
    rounds = int(pick(5, 20))
    spec = FleetSpec(agents=50, procs=5, events=20_000, seconds=pick(20, 80), seed=7)
    rng = random.Random(11)
    with environment(kind, tmp_path) as (db, server), Fleet(spec, tmp_path) as fleet:
        fleet.enroll(server.address, server.token(spec.agents))
        fleet.start()
        run_kills(fleet, server, rounds, rng)
        report = fleet.wait(timeout=spec.seconds + spec.drain_timeout_s + 60)
        server.stop()
        result = delivery(report.recorded, stored_event_ids(db))
    print(
        f"\n[chaos kill -9 {'long' if LONG else 'quick'} {kind}] agents={spec.agents} "
        f"kills={server.kills} elapsed={report.elapsed_s:.1f}s {result.line()}"
    )
    assert server.kills == rounds
    assert result.recorded == spec.events
    assert report.left == 0, "every outbox drained"
    assert result.lost == 0 and result.duplicates == 0 and result.unexpected == 0
    assert result.stored == result.recorded
