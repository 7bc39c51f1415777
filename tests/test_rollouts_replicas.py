"""Issue 14's acceptance, two replicas of the server on one PostgreSQL: a fleet of 200 real
agents (tests/rollout_fleet.py), half checking in with each replica, one rollout created on one
of them and scheduled by whichever holds its row: every host migrated exactly once (one
``run_migration`` action, one run, one backup on disk per host).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from bench.fleet import Database, ServerProcess, free_port
from rollout_fleet import SAMPLE_PATH, make_hosts, running_fleet
from test_rollouts_fleet import HOSTS, enrolled, in_state, migrated_exactly_once, until

pytestmark = pytest.mark.timeout(600)


def test_two_replicas_on_postgresql_migrate_every_host_exactly_once(tmp_path: Path) -> None:
    db = Database.create("postgresql", tmp_path)
    replicas: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            replica = ServerProcess(db, tmp_path / name, free_port())
            (tmp_path / name).mkdir()
            replica.env.update(
                # Replicas share the signing and input keys (README, "Replicas").
                FLAGPOST_STATE_DIR=str(tmp_path / "server-state"),
                FLAGPOST_CHECKIN_INTERVAL_SECONDS="10",
                FLAGPOST_ROLLOUT_TICK_SECONDS="0.2",
            )
            replicas.append(replica)
        first, second = replicas
        first.upgrade()
        for replica in replicas:
            replica.start()
        first.cli("migration", "add", str(SAMPLE_PATH))
        halves = [tmp_path / "hosts-a", tmp_path / "hosts-b"]
        roots = {}
        for index, half in enumerate(halves):
            half.mkdir()
            made = make_hosts(half, HOSTS // 2, bad=set(), offset=index * (HOSTS // 2))
            roots.update({root.name: root for root in made})
        with (
            running_fleet(halves[0], first.address, first.token(HOSTS // 2)),
            running_fleet(halves[1], second.address, second.token(HOSTS // 2)),
        ):
            enrolled(halves[0], first, HOSTS)
            rollout_id = second.cli(
                "rollout", "create", "myapp", "--waves", "5,25%,100%", "--max-failures", "0"
            )
            done = until(in_state(first, rollout_id, "COMPLETED", "HALTED"), "completion", 240)
            assert done["state"] == "COMPLETED", done["reason"]
        assert Counter(h["state"] for h in done["hosts"]) == {"succeeded": HOSTS}
        migrated_exactly_once(db, roots)
    finally:
        for replica in replicas:
            replica.stop()
        db.drop()
