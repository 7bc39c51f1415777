"""The server is down for a while (10 s quick, 60 s long) while the agents keep producing:
everything is delivered after it returns, and the agents' reconnections are spread out (full
jitter), not a thundering herd. Prints the spread of the reconnection times."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from bench.fleet import Fleet, FleetSpec, delivery, environment, spread, stored_event_ids
from chaos_testlib import LONG, pick


@pytest.mark.slow
def test_outage_then_everything_delivered_with_spread_reconnections(tmp_path: Path) -> None:
    outage = pick(10, 60)
    before, after = 3.0, 5.0
    spec = FleetSpec(
        agents=50,
        procs=5,
        events=int(pick(6_000, 25_000)),
        seconds=before + outage + after,
        retry_max_s=pick(8, 30),
        seed=3,
    )
    with environment("sqlite", tmp_path) as (db, server), Fleet(spec, tmp_path) as fleet:
        fleet.enroll(server.address, server.token(spec.agents))
        fleet.start()
        time.sleep(before)
        server.kill()
        down_at = time.time()
        time.sleep(outage)
        ready_at = server.start()
        report = fleet.wait(timeout=spec.seconds + spec.drain_timeout_s + 60)
        server.stop()
        result = delivery(report.recorded, stored_event_ids(db))
    times = report.reconnection_times(ready_at)
    print(
        f"\n[chaos outage {'long' if LONG else 'quick'}] down {ready_at - down_at:.1f}s "
        f"(retry cap {spec.retry_max_s:.0f}s) {result.line()}\n"
        f"reconnection after the server returned: {spread(times)}"
    )
    assert result.recorded == spec.events
    assert report.left == 0
    assert result.lost == 0 and result.duplicates == 0 and result.unexpected == 0
    # Every agent failed during the outage and came back afterwards.
    failed_during = [
        a
        for a in report.agents
        if any(not ok and down_at < t < ready_at for t, ok, _ in a.attempts)
    ]
    assert len(failed_during) == spec.agents
    # No check-in can succeed while the server is down, so a success after ``down_at`` is one
    # after the restart (``ready_at`` is read from the server's output a little after it
    # already answers, so a first success may carry a slightly earlier time).
    back = [a for a in report.agents if any(ok and t > down_at for t, ok, _ in a.attempts)]
    assert len(back) == spec.agents
    # Spread out by their own jittered backoff: not all at once, and none waits past the cap
    # (plus one check-in interval and scheduling slack).
    assert max(times) - min(times) > 1.0
    assert statistics.pstdev(times) > 0.3
    assert max(times) < spec.retry_max_s + 5
