"""Issue 14's acceptance on a fleet of 200 real agents (tests/rollout_fleet.py: the real agent
engine, real enrollment and gRPC check-ins, real spec runs and reverts on disk) against a real
``flagpost-server serve`` process driven by the ``flagpost-server rollout`` CLI:

- 10 % of the hosts hold a config the sample spec rejects; waves ``5,25%,100%``, gate 5 %: the
  rollout halts by itself in the first wave beyond 5 %, and no host it did not start was touched
  (byte-identical files, no backup); abort and revert puts every host back byte-identical.
- A healthy fleet completes every wave, each wave starting a soak after the previous one ended,
  through a pause (nothing new starts while paused) and a kill -9 of the server mid-wave: every
  host migrated once, one action each.

Two replicas on one PostgreSQL: tests/test_rollouts_replicas.py (its own file, so that the test
runs spread the fleets over their worker processes).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from bench.fleet import Database, ServerProcess, environment, query
from rollout_fleet import (
    BAD_INI,
    INI,
    SAMPLE_PATH,
    backups,
    etc_files,
    make_hosts,
    running_fleet,
)

HOSTS = 200
T = TypeVar("T")
pytestmark = pytest.mark.timeout(600)


def until(check: Callable[[], T | None], what: str, timeout: float = 180.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def show(server: ServerProcess, rollout_id: str) -> Any:
    return json.loads(server.cli("rollout", "show", rollout_id, "--json"))


def in_state(server: ServerProcess, rollout_id: str, *states: str) -> Callable[[], Any]:
    def check() -> Any:
        shown = show(server, rollout_id)
        return shown if shown["state"] in states else None

    return check


def settled(shown: Any) -> bool:
    """No host of the rollout is still pending or running."""
    return not any(w["counts"]["pending"] or w["counts"]["running"] for w in shown["waves_detail"])


def migrated_exactly_once(db: Database, roots: dict[str, Path]) -> None:
    """Every host of ``roots`` got one ``run_migration`` action and reported one run, and on
    disk it is at version 3 with one backup."""
    actions = query(
        db, "SELECT agent_id, count(*) FROM pending_actions WHERE kind = 'run_migration' "
        "GROUP BY agent_id",
    )  # fmt: skip
    assert len(actions) == len(roots) and {count for _, count in actions} == {"1"}
    runs = query(
        db, "SELECT agent_id, count(*) FROM migration_runs WHERE migration_id = 'myapp' "
        "GROUP BY agent_id",
    )  # fmt: skip
    assert len(runs) == len(roots) and {count for _, count in runs} == {"1"}
    for name, root in roots.items():
        assert (root / "etc/myapp/config.toml").exists(), name
        assert len(backups(root)) == 1, name


@pytest.fixture
def fleet_server(tmp_path: Path) -> Iterator[tuple[Database, ServerProcess]]:
    with environment("sqlite", tmp_path / "server") as (db, server):
        server.env.update(
            # Online means a check-in within 3 intervals: the whole fleet stays online.
            FLAGPOST_CHECKIN_INTERVAL_SECONDS="10",
            FLAGPOST_ROLLOUT_TICK_SECONDS="0.2",
        )
        server.stop()
        server.start()  # with the settings above
        server.cli("migration", "add", str(SAMPLE_PATH))
        yield db, server


def enrolled(base: Path, server: ServerProcess, count: int) -> None:
    """Wait until ``count`` agents checked in (the fleet process enrolls them first)."""
    until(
        lambda: json.loads(server.cli("agent", "select", "env=prod", "--json"))["count"] >= count,
        f"{count} agents online",
    )


def by_host(shown: Any) -> dict[str, Any]:
    return {host["hostname"]: host for host in shown["hosts"]}


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_tenth_of_bad_hosts_halts_in_the_first_wave_beyond_the_gate_then_revert(
    fleet_server: tuple[Database, ServerProcess], tmp_path: Path
) -> None:
    db, server = fleet_server
    base = tmp_path / "hosts"
    roots = {root.name: root for root in make_hosts(base, HOSTS, set())}
    with running_fleet(base, server.address, server.token(HOSTS)):
        enrolled(base, server, HOSTS)
    # The fleet is stopped (its hosts stay online for 3 intervals) while the rollout is made
    # and the bad tenth chosen: 20 hosts outside the first wave. Were one of the first 5 bad,
    # its failure could halt the rollout before the other four took their runs (the gate is
    # breached by the first failure of 5), leaving nothing migrated to revert.
    rollout_id = server.cli(
        "rollout", "create", "myapp", "--select", "env=prod",
        "--waves", "5,25%,100%", "--max-failure-rate", "5%",
    )  # fmt: skip
    created = show(server, rollout_id)
    assert created["wave_sizes"] == [5, 50, 200]
    waves = {host["hostname"]: host["wave"] for host in created["hosts"]}
    assert len(waves) == HOSTS
    later = sorted(name for name, wave in waves.items() if wave > 0)
    bad_names = set(random.Random(14).sample(later, HOSTS // 10))
    for name in bad_names:
        (roots[name] / INI).write_text(BAD_INI)
    start = {name: etc_files(root) for name, root in roots.items()}

    with running_fleet(base, server.address):
        # The first wave whose own hosts fail beyond 5 % (bad hosts fail; the others succeed).
        expected = next(
            wave
            for wave in range(3)
            if sum(1 for h, w in waves.items() if w == wave and h in bad_names)
            > 0.05 * sum(1 for w in waves.values() if w == wave)
        )

        halted = until(in_state(server, rollout_id, "HALTED"), "the rollout to halt")
        assert halted["current_wave"] == expected, halted["reason"]
        assert f"wave {expected + 1}" in halted["reason"] and "beyond its gate" in halted["reason"]
        halted = until(lambda: s if settled(s := show(server, rollout_id)) else None, "runs")
        assert halted["state"] == "HALTED"

        hosts = by_host(halted)
        started = {name for name, host in hosts.items() if host["run_id"]}
        assert started, "the started waves ran"
        assert all(waves[name] <= expected for name in started)
        for name, root in roots.items():
            host = hosts[name]
            if name in started:
                want = "failed" if name in bad_names else "succeeded"
                assert host["state"] == want, (name, host)
            if name not in started or name in bad_names:
                # never started, or failed and rolled back: untouched on disk
                assert etc_files(root) == start[name], (name, host)
            if name not in started:
                assert host["state"] in ("waiting", "pending"), (name, host)
                assert backups(root) == [], f"{name} was backed up but never started"
        migrated = {name for name in started if name not in bad_names}
        assert migrated and all((roots[n] / "etc/myapp/config.toml").exists() for n in migrated)

        # Abort and revert: every host this rollout migrated goes back, newest wave first.
        server.cli("rollout", "abort", rollout_id, "--revert")
        reverted = until(
            in_state(server, rollout_id, "REVERTED"), "the revert to finish", timeout=240
        )
        assert reverted["reverts"].get("reverted") == len(migrated), reverted["reverts"]
    for name, root in roots.items():
        assert etc_files(root) == start[name], f"{name} not byte-identical after the revert"
    runs = query(db, "SELECT count(*) FROM migration_runs WHERE reverts_run_id <> ''")
    assert int(runs[0][0]) == len(migrated)


def test_a_healthy_fleet_completes_through_soak_pause_and_a_server_kill(
    fleet_server: tuple[Database, ServerProcess], tmp_path: Path
) -> None:
    db, server = fleet_server
    base = tmp_path / "hosts"
    roots = {root.name: root for root in make_hosts(base, HOSTS, bad=set())}
    soak = 3.0
    with running_fleet(base, server.address, server.token(HOSTS)):
        enrolled(base, server, HOSTS)
        rollout_id = server.cli(
            "rollout", "create", "myapp", "--waves", "5,25%,100%",
            "--max-failure-rate", "5%", "--soak", f"{soak:g}s",
        )  # fmt: skip

        # Paused at once: the first wave's hosts (if it started) finish, and nothing else starts
        # however long it stays paused.
        server.cli("rollout", "pause", rollout_id)
        until(lambda: settled(show(server, rollout_id)), "the first wave's runs to end")
        time.sleep(soak + 1.5)
        paused = show(server, rollout_id)
        assert paused["state"] == "PAUSED"
        waiting = [w["counts"]["waiting"] for w in paused["waves_detail"]]
        assert waiting[1:] == [45, 150], paused["waves_detail"]
        server.cli("rollout", "resume", rollout_id)

        # kill -9 the server while a wave's hosts are running; it resumes where it was.
        mid = until(
            lambda: (
                (s := show(server, rollout_id))["current_wave"] >= 1
                and s["waves_detail"][s["current_wave"]]["counts"]["succeeded"] > 0
                and not settled(s)
                and s
            ),
            "a wave half done",
        )
        server.kill()
        server.start()
        done = until(in_state(server, rollout_id, "COMPLETED", "HALTED"), "completion", 240)
        assert done["state"] == "COMPLETED", done["reason"]
        assert mid["state"] == "RUNNING"

    hosts = done["hosts"]
    assert Counter(h["state"] for h in hosts) == {"succeeded": HOSTS}
    # Soak: no host of a wave started before the soak after the previous wave's last result.
    finished = query(
        db,
        f"SELECT wave, min(started_at), max(finished_at) FROM rollout_hosts "
        f"WHERE rollout_id = '{rollout_id}' GROUP BY wave ORDER BY wave",
    )
    for before, after in itertools.pairwise(finished):
        gap = (stamp(after[1]) - stamp(before[2])).total_seconds()
        assert gap >= soak, (before, after)
    migrated_exactly_once(db, roots)
